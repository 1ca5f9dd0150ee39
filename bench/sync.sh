#!/usr/bin/env bash
# Sync benchmark: one ferry server and two `ferry sync` clients (A and B) on
# loopback, release build, every folder and the server's data in one scratch
# directory on one filesystem.
#
#   bench/sync.sh            100 latency probes, 1,000 files, a 1 GiB file
#   bench/sync.sh --quick    20 probes, 200 files, 64 MiB (smoke check)
#
# Measured (bench/sync_probe.py does the timing, polling B every 0.5 ms; a
# file B receives appears by rename, so "there with its size" is "complete"):
#   latency   a 1 KiB file written on A until it is complete on B, one file
#             at a time, COUNT times: p50, p99 and max
#   1,000     1,000 files of 1 KiB written on A as fast as Python writes them,
#             until the last one is complete on B
#   big       a file of SIZE random bytes moved (renamed) into A until it is
#             complete on B, against a raw loopback copy of the same file:
#             socat -u -b 1048576 FILE:in TCP:127.0.0.1:PORT into a socat
#             TCP-LISTEN receiver, then `sync` of the output (ferry's server
#             fsyncs before it pushes), as in bench/transfer.sh; also when
#             the server committed it (its file appears under sync/files by
#             rename, after the fsync; polled every 5 ms) and how long B
#             took after that (the server relays a large upload to B as it
#             arrives, so B should need little more than the commit)
# Targets (docs/sync.md): p50 < 50 ms, p99 < 200 ms, 1,000 files < 5 s,
# big file at >= 0.5x the raw copy's rate.
#
# Environment:
#   COUNT      latency probes (default 100; --quick 20)
#   FILES      files in the bulk step (default 1000; --quick 200)
#   SIZE       big file size, IEC suffixes allowed (default 1G; --quick 64M)
#   BENCH_DIR  where the scratch directory is made (default ${TMPDIR:-/tmp})
#   FERRY      a ferry binary to run instead of building this checkout's
#              release build (to compare two builds side by side)
set -euo pipefail
export LC_ALL=C
NAME=sync.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/lib.sh"

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help) usage "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done
if ((QUICK)); then
    COUNT=${COUNT:-20} FILES=${FILES:-200} SIZE=${SIZE:-64M}
else
    COUNT=${COUNT:-100} FILES=${FILES:-1000} SIZE=${SIZE:-1G}
fi
need_tools cargo python3 socat ss cmp sync awk sort numfmt df git getconf
((BASH_VERSINFO[0] >= 5)) || die "needs bash 5 (EPOCHREALTIME)"
BYTES=$(numfmt --from=iec "$SIZE") || die "bad SIZE: $SIZE"
[[ $COUNT =~ ^[0-9]+$ && $FILES =~ ^[0-9]+$ && $BYTES =~ ^[0-9]+$ ]] || die "COUNT, FILES and SIZE must be numbers"

PROBE="python3 $ROOT/bench/sync_probe.py"
if [[ -n ${FERRY:-} ]]; then
    [[ -x $FERRY ]] || die "FERRY=$FERRY is not an executable"
    note "using $FERRY (not building)"
else
    FERRY=${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry
    note "building: cargo build --release -p ferry-cli"
    (cd "$ROOT" && cargo build --release -p ferry-cli --quiet) || die "build failed"
fi

PARENT=${BENCH_DIR:-${TMPDIR:-/tmp}}
mkdir -p "$PARENT"
free_kib=$(df -Pk "$PARENT" | awk 'NR == 2 { print $4 }')
((free_kib >= BYTES * 5 / 1024 + 262144)) || die "$PARENT needs about $((BYTES * 5 / 1048576 + 256)) MiB free"
WORK=$(mktemp -d "$PARENT/ferry-sync-bench.XXXXXX")
DATA=$WORK/server
CLIENT_PIDS=()
RECV_PID=""
COMMIT_PID=""

cleanup() {
    local rc=$? pid
    for pid in "${CLIENT_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -z $RECV_PID ]] || kill "$RECV_PID" 2>/dev/null || true
    [[ -z $COMMIT_PID ]] || kill "$COMMIT_PID" 2>/dev/null || true
    stop_ferry "$DATA" || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }

# --- server and clients --------------------------------------------------------

start_ferry "$FERRY" "$DATA" "$WORK/server.log" --transfer-port 0 --sync-port 0 --sync-push-port 0 --no-http --no-kv
PORT=$(listen_addr "$DATA" sync) PORT=${PORT##*:}
PUSH_PORT=$(listen_addr "$DATA" sync_push) PUSH_PORT=${PUSH_PORT##*:}
for c in A B; do
    "$FERRY" sync 127.0.0.1 "$WORK/$c" --port "$PORT" --push-port "$PUSH_PORT" --client-id "bench-$c" \
        >/dev/null 2>>"$WORK/$c.log" &
    CLIENT_PIDS+=($!)
done
deadline=$((SECONDS + 60))
until grep -q "connected to" "$WORK/A.log" 2>/dev/null && grep -q "connected to" "$WORK/B.log" 2>/dev/null; do
    ((SECONDS < deadline)) || die "the clients did not connect within 60 s (logs in $WORK)"
    sleep 0.05
done

# --- latency -------------------------------------------------------------------

note "latency: $COUNT files of 1 KiB, one at a time"
$PROBE latency "$WORK/A" "$WORK/B" "$COUNT" 1024 >"$WORK/latency.txt" || die "latency probe failed"
read -r P50 P99 MAX < <(sort -n "$WORK/latency.txt" | awk '{ v[NR] = $1 } END {
    p50 = v[int((NR + 1) / 2)]; i = int(NR * 0.99 + 0.999); if (i > NR) i = NR
    print p50, v[i], v[NR] }')

# --- 1,000 files ---------------------------------------------------------------

note "bulk: $FILES files of 1 KiB"
BULK=$($PROBE bulk "$WORK/A" "$WORK/B" "$FILES" 1024) || die "bulk probe failed"

# --- big file vs raw copy ------------------------------------------------------

note "big: $SIZE of random bytes"
head -c "$BYTES" /dev/urandom >"$WORK/input"
RAW_OUT=$WORK/raw-out
socat -u -b 1048576 TCP-LISTEN:0,bind=127.0.0.1,reuseaddr "OPEN:$RAW_OUT,creat,trunc" 2>>"$WORK/socat.log" &
RECV_PID=$!
deadline=$((SECONDS + 10))
until RAW_PORT=$(ss -ltnpH 2>/dev/null | awk -v p="pid=$RECV_PID," 'index($0, p) { print $4; exit }') && [[ -n $RAW_PORT ]]; do
    ((SECONDS < deadline)) || die "socat receiver not listening after 10 s"
    sleep 0.02
done
sync
t0=$(now_us)
socat -u -b 1048576 "FILE:$WORK/input" "TCP:127.0.0.1:${RAW_PORT##*:}" 2>>"$WORK/socat.log"
wait "$RECV_PID"
RECV_PID=""
sync "$RAW_OUT" "$WORK"
t1=$(now_us)
RAW_US=$((t1 - t0))
cmp -s "$WORK/input" "$RAW_OUT" || die "raw copy differs from the input"
rm -f "$RAW_OUT"

# CPU clock ticks (user + system) a process has used.
cpu_ticks() { local l; read -r l <"/proc/$1/stat"; l=${l##*) }; set -- $l; echo $((${12} + ${13})); }
SERVER_PID=$(<"$DATA/ferry.pid")
sync
cpu0=("$(cpu_ticks "${CLIENT_PIDS[0]}")" "$(cpu_ticks "$SERVER_PID")" "$(cpu_ticks "${CLIENT_PIDS[1]}")")
python3 -c 'import os, sys, time
while not os.path.exists(sys.argv[1]): time.sleep(0.005)
print(time.time())' "$DATA/sync/files/big.bin" >"$WORK/committed" &
COMMIT_PID=$!
t0=$(now_us)
mv "$WORK/input" "$WORK/A/big.bin"
arrived=$($PROBE arrive "$WORK/B" big.bin "$BYTES") || die "the big file did not arrive"
SYNC_US=$(awk -v a="$arrived" -v t="$t0" 'BEGIN { printf "%d", a * 1e6 - t }')
wait "$COMMIT_PID" || die "no committed file seen on the server"
COMMIT_PID=""
COMMIT_US=$(awk -v c="$(<"$WORK/committed")" -v t="$t0" 'BEGIN { printf "%d", c * 1e6 - t }')
sleep 0.5 # B finishes answering the push
TICK=$(getconf CLK_TCK)
CPU_A=$(( $(cpu_ticks "${CLIENT_PIDS[0]}") - cpu0[0] ))
CPU_S=$(( $(cpu_ticks "$SERVER_PID") - cpu0[1] ))
CPU_B=$(( $(cpu_ticks "${CLIENT_PIDS[1]}") - cpu0[2] ))
cmp -s "$WORK/A/big.bin" "$WORK/B/big.bin" || die "B's copy of the big file differs"

# --- report --------------------------------------------------------------------

echo "ferry sync benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
machine_facts "$ROOT"
echo "  command    bench/sync.sh$( ((QUICK)) && echo " --quick")  (COUNT=$COUNT FILES=$FILES SIZE=$SIZE)"
echo
awk -v p50="$P50" -v p99="$P99" -v max="$MAX" -v n="$COUNT" -v bulk="$BULK" -v files="$FILES" \
    -v raw="$RAW_US" -v ferry="$SYNC_US" -v commit="$COMMIT_US" -v bytes="$BYTES" -v size="$SIZE" \
    -v a="$CPU_A" -v s="$CPU_S" -v bb="$CPU_B" -v tick="$TICK" 'BEGIN {
    mib = bytes / 1048576
    printf "| measure | result | target |\n|---|---|---|\n"
    printf "| latency p50 (%d x 1 KiB, A to B) | %.1f ms | < 50 ms |\n", n, p50
    printf "| latency p99 | %.1f ms | < 200 ms |\n", p99
    printf "| latency max | %.1f ms | |\n", max
    printf "| %d files of 1 KiB, A to B | %.2f s | < 5 s |\n", files, bulk
    printf "| %s file, raw loopback copy + fsync | %.2f s (%.0f MiB/s) | |\n", size, raw / 1e6, mib / (raw / 1e6)
    printf "| %s file, A to B through the server | %.2f s (%.0f MiB/s) | |\n", size, ferry / 1e6, mib / (ferry / 1e6)
    printf "| %s file, ferry rate / raw rate | %.2fx | >= 0.5x |\n", size, raw / ferry
    printf "| %s file, committed on the server / then complete on B | %.2f s / %.2f s more | |\n", size, commit / 1e6, (ferry - commit) / 1e6
    printf "| %s file, CPU (user + system): client A / server / client B | %.2f / %.2f / %.2f s | |\n", size, a / tick, s / tick, bb / tick
}'
