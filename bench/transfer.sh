#!/usr/bin/env bash
# Transfer benchmark: ferry PUT and GET against a raw loopback copy (socat),
# measured side by side in one run and reported as throughput ratios.
#
#   bench/transfer.sh            1 GiB file, 3 rounds
#   bench/transfer.sh --quick    64 MiB file, 1 round (smoke check)
#
# Contenders, all moving the same file of random bytes over 127.0.0.1 into a
# new file on the same filesystem, each timed end to end:
#   raw        socat -u FILE:in TCP:127.0.0.1:PORT into a socat TCP-LISTEN
#              receiver, then fsync of the output file and its directory
#              (ferry fsyncs before it reports success, so the copy does too)
#   put        ferry put FILE --as put-N   (server verifies BLAKE3, fsyncs, renames)
#   get        ferry get src -o OUT        (client verifies BLAKE3, fsyncs, renames;
#              the server knows the digest, as after an upload through ferry)
#   get-cold   as get, but the server was just restarted, so it hashes the
#              file while streaming it (diagnostic; not a target)
# Every round runs each contender once; the order rotates from round to
# round so that no contender always follows the same one. An untimed
# warm-up round comes first. Outputs are compared with the input (cmp)
# outside the timed sections and deleted right after, so every step starts
# the same way.
#
# Environment:
#   SIZE       bytes to transfer, IEC suffixes allowed (default 1G; --quick 64M)
#   ROUNDS     rounds (default 3; --quick 1)
#   BENCH_DIR  where the scratch directory is created (default ${TMPDIR:-/tmp});
#              input, outputs and the server's data directory all live in it
#   RAW_BUF    socat buffer size in bytes (default 262144, ferry's chunk size;
#              socat's own default of 8192 makes a much slower baseline)
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
NAME=transfer.sh

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help) usage "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done
if ((QUICK)); then
    SIZE=${SIZE:-64M}
    ROUNDS=${ROUNDS:-1}
else
    SIZE=${SIZE:-1G}
    ROUNDS=${ROUNDS:-3}
fi
RAW_BUF=${RAW_BUF:-262144}

FERRY=${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry

# --- tools -------------------------------------------------------------------

if ! command -v socat >/dev/null; then
    note "socat is missing; installing it (apt-get install -y socat)"
    [[ $(id -u) -eq 0 ]] || die "socat is missing and installing it needs root: apt-get install -y socat"
    apt-get install -y socat >/dev/null || { apt-get update >/dev/null && apt-get install -y socat >/dev/null; } ||
        die "could not install socat"
fi
for tool in cargo socat ss cmp sync head awk sed numfmt df getconf git; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
((BASH_VERSINFO[0] >= 5)) || die "needs bash 5 (EPOCHREALTIME)"

BYTES=$(numfmt --from=iec "$SIZE") || die "bad SIZE: $SIZE"
[[ $BYTES =~ ^[0-9]+$ ]] && ((BYTES > 0)) || die "bad SIZE: $SIZE"
[[ $ROUNDS =~ ^[0-9]+$ ]] && ((ROUNDS > 0)) || die "bad ROUNDS: $ROUNDS"
[[ $RAW_BUF =~ ^[0-9]+$ ]] && ((RAW_BUF > 0)) || die "bad RAW_BUF: $RAW_BUF"
TICK=$(getconf CLK_TCK)

# --- build -------------------------------------------------------------------

note "building: cargo build --release -p ferry-cli"
(cd "$ROOT" && cargo build --release -p ferry-cli --quiet) || die "build failed"
[[ -x $FERRY ]] || die "no binary at $FERRY"

# --- scratch directory, cleanup ----------------------------------------------

PARENT=${BENCH_DIR:-${TMPDIR:-/tmp}}
mkdir -p "$PARENT"
# At most the input, the GET source on the server and one output exist at
# once (the server's upload briefly sits next to them); ask for 4x.
need_kib=$((BYTES * 4 / 1024 + 65536))
free_kib=$(df -Pk "$PARENT" | awk 'NR == 2 { print $4 }')
((free_kib >= need_kib)) ||
    die "$PARENT has $((free_kib / 1024)) MiB free; this run needs about $((need_kib / 1024)) MiB"

WORK=$(mktemp -d "$PARENT/ferry-bench.XXXXXX")
SERVER_PID=""
RECV_PID=""

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    local pid=$SERVER_PID deadline=$((SECONDS + 30))
    SERVER_PID=""
    kill "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || { note "server $pid did not stop within 30 s"; return 1; }
        sleep 0.05
    done
}

cleanup() {
    local rc=$?
    if [[ -n $RECV_PID ]]; then kill "$RECV_PID" 2>/dev/null || true; fi
    stop_server || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

IN=$WORK/input
OUT=$WORK/out
DATA=$WORK/server
FILES=$DATA/files
mkdir -p "$OUT" "$WORK/cache"
export FERRY_CACHE_DIR=$WORK/cache

# --- helpers -----------------------------------------------------------------

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }

# CPU clock ticks "user system" of process $1 itself, or of its reaped children.
cpu_self() { local l; read -r l <"/proc/$1/stat"; l=${l##*) }; set -- $l; echo "${12} ${13}"; }
cpu_children() { local l; read -r l <"/proc/$1/stat"; l=${l##*) }; set -- $l; echo "${14} ${15}"; }

start_server() {
    rm -f "$DATA/listen.json" "$DATA/ferry.pid"
    "$FERRY" serve --data "$DATA" --transfer-port 0 --no-http --no-kv --no-sync >>"$WORK/server.log" 2>&1 &
    local launched=$! deadline=$((SECONDS + 60))
    until [[ -s $DATA/listen.json && -s $DATA/ferry.pid ]]; do
        kill -0 "$launched" 2>/dev/null || { cat "$WORK/server.log" >&2; die "ferry serve exited"; }
        ((SECONDS < deadline)) || { cat "$WORK/server.log" >&2; die "no listen.json after 60 s"; }
        sleep 0.05
    done
    SERVER_PID=$(<"$DATA/ferry.pid")
    ADDR=$(sed -n 's/.*"transfer": *"\([^"]*\)".*/\1/p' "$DATA/listen.json")
    [[ -n $ADDR ]] || die "no transfer address in $DATA/listen.json"
}

# Waits until socat $1 listens; prints its port.
listener_port() {
    local pid=$1 deadline=$((SECONDS + 10)) addr
    while :; do
        addr=$(ss -ltnpH 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) { print $4; exit }')
        [[ -z $addr ]] || { echo "${addr##*:}"; return; }
        kill -0 "$pid" 2>/dev/null || die "socat receiver exited before listening"
        ((SECONDS < deadline)) || die "socat receiver not listening after 10 s"
        sleep 0.02
    done
}

same() { cmp -s "$IN" "$1" || die "$2: output differs from the input"; }

# Results per contender and round: T wall microseconds; CU CS client and
# SU SS server CPU ticks; RETRIES client reconnects.
declare -A T CU CS SU SS RETRIES
CONTENDERS=(raw put get get-cold)

# Runs one timed step: $1 contender, $2 round, $3 a set-up command run
# before the clock starts (or :), rest: the timed command.
# CPU: children of this shell reaped during the step (the client side; for
# raw, both socat processes and sync) and the ferry server process.
timed() {
    local who=$1 r=$2 setup=$3 t0 t1 c0 c1 s0 s1
    shift 3
    sync # no dirty pages left over from earlier steps
    $setup
    read -ra c0 <<<"$(cpu_children $$)"
    read -ra s0 <<<"$(cpu_self "$SERVER_PID")"
    t0=$(now_us)
    "$@"
    t1=$(now_us)
    read -ra c1 <<<"$(cpu_children $$)"
    read -ra s1 <<<"$(cpu_self "$SERVER_PID")"
    T[$who,$r]=$((t1 - t0))
    CU[$who,$r]=$((c1[0] - c0[0]))
    CS[$who,$r]=$((c1[1] - c0[1]))
    SU[$who,$r]=$((s1[0] - s0[0]))
    SS[$who,$r]=$((s1[1] - s0[1]))
    awk -v r="$r" -v w="$who" -v us="${T[$who,$r]}" -v b="$BYTES" \
        'BEGIN { printf "%-8s %-8s %8.3f s  %8.1f MiB/s", r ? "round " r : "warm-up", w, us / 1e6, b / 1048576 / (us / 1e6) }'
}

# The raw copy. The receiver is started and seen listening before the clock
# starts (as the ferry server is); the clock runs from the sender's start
# until the receiver has exited and the output is fsynced.
RAW_OUT=""
RAW_PORT=""
raw_listen() {
    socat -u -b "$RAW_BUF" TCP-LISTEN:0,bind=127.0.0.1,reuseaddr "OPEN:$RAW_OUT,creat,trunc" 2>>"$WORK/socat.log" &
    RECV_PID=$!
    RAW_PORT=$(listener_port "$RECV_PID") || die "no socat listener"
}
raw_copy() {
    socat -u -b "$RAW_BUF" "FILE:$IN" "TCP:127.0.0.1:$RAW_PORT" 2>>"$WORK/socat.log" || die "socat sender failed"
    wait "$RECV_PID" || die "socat receiver failed"
    RECV_PID=""
    sync "$RAW_OUT" "$(dirname "$RAW_OUT")"
}

# Clients run without --quiet but with stderr in a file (so no progress bar):
# their notices show whether a transfer had to reconnect and resume.
put_cmd() { "$FERRY" put "$IN" --as "$1" --server "$ADDR" 2>"$WORK/client.log" || client_failed; }
get_cmd() { "$FERRY" get "$1" -o "$2" --server "$ADDR" 2>"$WORK/client.log" || client_failed; }
client_failed() { cat "$WORK/client.log" >&2; die "ferry client failed"; }
reconnects() { grep -c 'retrying' "$WORK/client.log" || true; }
restart_server() { stop_server && start_server; }

# One step per contender: timed run, then (untimed) check and delete.
step_raw() {
    RAW_OUT=$OUT/raw-$1
    timed raw "$1" raw_listen raw_copy
    echo
    same "$RAW_OUT" "raw round $1"
    rm -f "$RAW_OUT"
}
step_put() {
    timed put "$1" : put_cmd "put-$1"
    RETRIES[put,$1]=$(reconnects)
    echo "  (${RETRIES[put,$1]} reconnects)"
    same "$FILES/put-$1" "put round $1"
    rm -f "$FILES/put-$1"
}
step_get() {
    timed get "$1" : get_cmd src "$OUT/get-$1"
    RETRIES[get,$1]=$(reconnects)
    echo "  (${RETRIES[get,$1]} reconnects)"
    same "$OUT/get-$1" "get round $1"
    [[ ! -e $OUT/get-$1.part ]] || die "get round $1 left a .part file"
    rm -f "$OUT/get-$1"
}
step_get-cold() {
    timed get-cold "$1" restart_server get_cmd src "$OUT/cold-$1"
    RETRIES[get-cold,$1]=$(reconnects)
    echo "  (${RETRIES[get-cold,$1]} reconnects)"
    same "$OUT/cold-$1" "get-cold round $1"
    rm -f "$OUT/cold-$1"
}

# --- machine facts -----------------------------------------------------------

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    DIRTY=" + uncommitted changes (git diff HEAD sha256 $(git -C "$ROOT" diff HEAD | sha256sum | cut -c1-12))"
fi
CPU=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "ferry transfer benchmark"
echo "  size       $BYTES bytes ($(numfmt --to=iec-i --suffix=B "$BYTES")), $ROUNDS round(s)"
echo "  machine    $(nproc) CPUs, ${CPU:-unknown CPU}, kernel $(uname -r)"
echo "  ferry      $COMMIT$DIRTY"
echo "  binary     $FERRY"
echo "  socat      $(socat -V | awk '/socat version/ { print $3; exit }'), buffer $RAW_BUF bytes"
echo "  scratch    $WORK ($(df -P "$WORK" | awk 'NR == 2 { print $1 }'))"
echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg) (start)"

note "writing $BYTES random bytes"
head -c "$BYTES" /dev/urandom >"$IN"
sync "$IN"
start_server
# The GET source, uploaded once, untimed: afterwards the server knows its digest.
put_cmd src
same "$FILES/src" "uploading the GET source"
echo "  server     $ADDR"
echo

# --- rounds ------------------------------------------------------------------

# Round 0 is the warm-up; the report uses rounds 1..ROUNDS.
n=${#CONTENDERS[@]}
for ((r = 0; r <= ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
        "step_${CONTENDERS[(i + r + n - 1) % n]}" "$r"
    done
done
echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg) (end)"
stop_server
echo

# --- report ------------------------------------------------------------------

# The values of associative array $1 for contender $2, round by round.
series() { local -n arr=$1; local r out=""; for ((r = 1; r <= ROUNDS; r++)); do out+="${arr[$2,$r]:-0} "; done; echo "$out"; }

declare -A MED
for w in "${CONTENDERS[@]}"; do
    MED[$w]=$(series T "$w" | median)
done

echo "Wall time: median of $ROUNDS round(s); MiB/s = $BYTES bytes / median seconds"
echo
echo "| contender | median s | MiB/s | each round (s) | reconnects per round |"
echo "|---|---:|---:|---|---|"
for w in "${CONTENDERS[@]}"; do
    rounds=$(series T "$w" | awk '{ for (i = 1; i <= NF; i++) printf "%s%.3f", (i > 1 ? " " : ""), $i / 1e6 }')
    retries="-"
    [[ $w == raw ]] || retries=$(series RETRIES "$w")
    awk -v w="$w" -v us="${MED[$w]}" -v b="$BYTES" -v rs="$rounds" -v rt="${retries% }" \
        'BEGIN { printf "| %s | %.3f | %.1f | %s | %s |\n", w, us / 1e6, b / 1048576 / (us / 1e6), rs, rt }'
done
echo

echo "Throughput ratio vs raw = raw seconds / ferry seconds: of the medians, and within each round"
echo
echo "| ratio | of medians | each round | median of rounds | target |"
echo "|---|---:|---|---:|---|"
for w in put get get-cold; do
    per=""
    for ((r = 1; r <= ROUNDS; r++)); do
        per+=$(awk -v a="${T[raw,$r]}" -v b="${T[$w,$r]}" 'BEGIN { printf "%.2f ", a / b }')
    done
    if [[ $w == get-cold ]]; then target="diagnostic"; else target="≥ 0.7 (aim 0.9)"; fi
    awk -v w="$w" -v raw="${MED[raw]}" -v f="${MED[$w]}" -v per="${per% }" -v pm="$(median <<<"$per")" -v t="$target" '
        BEGIN {
            r = raw / f
            v = ""
            if (t != "diagnostic") v = r >= 0.9 ? ": meets the aim" : (r >= 0.7 ? ": meets the target" : ": BELOW target")
            printf "| ferry %s / raw | %.2f | %s | %.2f | %s%s |\n", w, r, per, pm, t, v
        }'
done
echo

echo "CPU seconds per transfer (median; client = processes this script ran for the step, server = ferry serve)"
echo
echo "| contender | client user | client sys | server user | server sys |"
echo "|---|---:|---:|---:|---:|"
for w in "${CONTENDERS[@]}"; do
    printf "| %s |" "$w"
    for a in CU CS SU SS; do
        awk -v t="$(series "$a" "$w" | median)" -v k="$TICK" 'BEGIN { printf " %.2f |", t / k }'
    done
    echo
done
