#!/usr/bin/env bash
# kv benchmark: ferry's memcached-compatible kv service against memcached,
# side by side in one run, reported as ratios.
#
#   bench/kv.sh            1,000,000 items, 3 rounds of 10 s runs
#   bench/kv.sh --quick    100,000 items, 1 round of 3 s runs (smoke check)
#   bench/kv.sh --keep     keep the scratch directory (logs, memcaslap output)
#
# Servers, all started by this script and all running for the whole run:
#   memcached      memcached -l 127.0.0.1 -p PORT -U 0 -m 1024 -t 2 -c 4096
#                  (plus -u nobody when run as root, which memcached requires)
#   ferry-os       ferry serve --kv-port 0 ... with [kv] durability = "os"
#   ferry-fsync    the same with durability = "fsync"
#   ferry-memory   the same with durability = "memory" (extra; no target)
# Every ferry server has its own data directory and the default max_memory
# (1 GiB, as memcached's -m 1024) and runtime (2 threads, as memcached's -t 2).
# They run a copy of target/release/ferry taken right after the build; every
# server is stopped by its pid (memcached: our child; ferry: DIR/ferry.pid),
# never by name.
#
# 1. Memory per item: right after start, each server's VmRSS is read; then one
#    server after the other gets ITEMS sets of new keys (16-byte keys, 100-byte
#    values) from memcaslap (32 connections, set only); curr_items must then
#    be ITEMS; (VmRSS after - VmRSS before) / ITEMS is the cost per item.
# 2. Throughput, on the loaded servers: memcaslap, 90% get / 10% set, 16-byte
#    keys and 100-byte values, CONCURRENCY connections over THREADS client
#    threads, DURATION per run, in two variants:
#      single     --division=1: one key per get, one request in flight per
#                 connection
#      multiget   --division=DIVISION: gets of DIVISION keys in one request
#                 (memcaslap's only form of batching; it counts every key as
#                 one op, sets stay single)
#      pipelined  ferry-kvload (bench/kvload), the same mix and sizes with one
#                 key per get, DEPTH requests in flight per connection (sent
#                 in one write, then all replies read and checked), over a
#                 key space of PIPE_KEYS keys it sets on every server first
#    An untimed warm-up round (WARMUP per run) comes first. Then every round
#    runs every server once per variant; the order rotates from round to
#    round and variant to variant, so noise from the shared machine hits all
#    servers alike. Reported: median ops/s over the rounds, ferry / memcached
#    of the medians and within each round, and server CPU per op.
#
# Targets: ferry-os >= 1.0x memcached's ops/s, ferry-fsync >= 0.8x, and
# ferry's memory per item <= 1.5x memcached's.
#
# Environment:
#   ITEMS        items loaded for the memory measurement (default 1000000; --quick 100000)
#   ROUNDS       timed rounds (default 3; --quick 1)
#   DURATION     memcaslap --time per timed run (default 10s; --quick 3s)
#   WARMUP       memcaslap --time per warm-up run (default 3s; --quick 1s)
#   CONCURRENCY  memcaslap --concurrency (default 32)
#   THREADS      memcaslap --threads (default 2)
#   DIVISION     keys per get in the multiget variant (default 16)
#   WIN_SIZE     memcaslap --win_size in the throughput runs (default 10k)
#   DEPTH        requests in flight per connection in the pipelined variant (default 16)
#   PIPE_KEYS    key space of the pipelined variant (default 100000; --quick 20000)
#   BENCH_DIR    where the scratch directory is created (default ${TMPDIR:-/tmp})
#   PROFILE      if set to a directory: after the rounds, one more run of each
#                variant against ferry-os and ferry-fsync under
#                `perf record -g -p PID`; `perf report --no-children --sort
#                symbol` goes to PROFILE/<server>-<variant>.txt
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
NAME=kv.sh

QUICK=0
KEEP=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --keep) KEEP=1 ;;
        -h | --help) usage "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done
if ((QUICK)); then
    ITEMS=${ITEMS:-100000} ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3s} WARMUP=${WARMUP:-1s}
    PIPE_KEYS=${PIPE_KEYS:-20000}
else
    ITEMS=${ITEMS:-1000000} ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s} WARMUP=${WARMUP:-3s}
    PIPE_KEYS=${PIPE_KEYS:-100000}
fi
CONCURRENCY=${CONCURRENCY:-32}
THREADS=${THREADS:-2}
DIVISION=${DIVISION:-16}
WIN_SIZE=${WIN_SIZE:-10k}
DEPTH=${DEPTH:-16}
PROFILE=${PROFILE:-}

FERRY=${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry
KVLOAD=${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry-kvload

# --- tools, arguments ----------------------------------------------------------

for tool in cargo memcached memcaslap awk sed sort git nproc uname timeout; do
    command -v "$tool" >/dev/null || die "needs $tool (memcached and memcaslap: apt-get install memcached libmemcached-tools)"
done
[[ -z $PROFILE ]] || command -v perf >/dev/null || die "PROFILE needs perf"
for v in ITEMS ROUNDS CONCURRENCY THREADS DIVISION DEPTH PIPE_KEYS; do
    [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} > 0)) || die "bad $v: ${!v}"
done
for v in DURATION WARMUP; do
    [[ ${!v} =~ ^[0-9]+[smh]$ ]] || die "bad $v: ${!v} (e.g. 10s)"
done
[[ $WIN_SIZE =~ ^[0-9]+[kKmM]?$ ]] || die "bad WIN_SIZE: $WIN_SIZE"
((DIVISION > 1)) || die "DIVISION must be above 1 (1 is the single variant)"
TICK=$(getconf CLK_TCK)

# --- build ---------------------------------------------------------------------

note "building: cargo build --release -p ferry-cli -p ferry-kvload"
(cd "$ROOT" && cargo build --release -p ferry-cli -p ferry-kvload --quiet) || die "build failed"
[[ -x $FERRY ]] || die "no binary at $FERRY"
[[ -x $KVLOAD ]] || die "no binary at $KVLOAD"

# --- scratch directory, servers, cleanup -----------------------------------------

PARENT=${BENCH_DIR:-${TMPDIR:-/tmp}}
mkdir -p "$PARENT"
WORK=$(mktemp -d "$PARENT/ferry-kvbench.XXXXXX")
# The servers run a copy taken right after the build, so that a concurrent
# rebuild of target/ cannot change what runs (or what perf resolves against).
cp "$FERRY" "$WORK/ferry" || { rm -rf "$WORK"; die "cannot copy $FERRY"; }
cp "$KVLOAD" "$WORK/ferry-kvload" || { rm -rf "$WORK"; die "cannot copy $KVLOAD"; }
FERRY=$WORK/ferry
KVLOAD=$WORK/ferry-kvload

SERVERS=(memcached ferry-os ferry-fsync ferry-memory)
declare -A PID PORT
PERF_PID=""

stop_pid() {
    local pid=$1 deadline=$((SECONDS + 30))
    kill "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || { note "process $pid did not stop within 30 s"; return 1; }
        sleep 0.05
    done
}

cleanup() {
    local rc=$? s
    if [[ -n $PERF_PID ]]; then kill -INT "$PERF_PID" 2>/dev/null || true; fi
    for s in "${SERVERS[@]}"; do
        if [[ -n ${PID[$s]:-} ]]; then stop_pid "${PID[$s]}" || true; fi
    done
    if ((KEEP)); then note "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    # A port nothing listens on, below the usual ephemeral range (32768-).
    local p
    for ((p = 20000 + RANDOM % 10000; ; p++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}

start_memcached() {
    local user=() deadline=$((SECONDS + 30)) port
    [[ $(id -u) -ne 0 ]] || user=(-u nobody)
    port=$(free_port)
    memcached "${user[@]}" -l 127.0.0.1 -p "$port" -U 0 -m 1024 -t 2 -c 4096 >>"$WORK/memcached.log" 2>&1 &
    PID[memcached]=$!
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "${PID[memcached]}" 2>/dev/null || { cat "$WORK/memcached.log" >&2; die "memcached exited"; }
        ((SECONDS < deadline)) || die "memcached not listening after 30 s"
        sleep 0.05
    done
    PORT[memcached]=$port
}

# $1 server name, $2 durability.
start_ferry() {
    local name=$1 dir=$WORK/$1 deadline=$((SECONDS + 60)) launched
    mkdir -p "$dir"
    printf '[kv]\ndurability = "%s"\n' "$2" >"$WORK/$name.toml"
    "$FERRY" serve --data "$dir" --kv-port 0 --transfer-port 0 --no-http --no-sync \
        --config "$WORK/$name.toml" >>"$WORK/$name.log" 2>&1 &
    launched=$!
    until [[ -s $dir/listen.json && -s $dir/ferry.pid ]]; do
        kill -0 "$launched" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name: ferry serve exited"; }
        ((SECONDS < deadline)) || { cat "$WORK/$name.log" >&2; die "$name: no listen.json after 60 s"; }
        sleep 0.05
    done
    PID[$name]=$(<"$dir/ferry.pid")
    PORT[$name]=$(sed -n 's/.*"kv": *"127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$dir/listen.json")
    [[ -n ${PORT[$name]} ]] || die "$name: no kv address in $dir/listen.json"
}

alive() { kill -0 "${PID[$1]}" 2>/dev/null || die "$1 (pid ${PID[$1]}) is gone"; }

# `stats` value $2 of server $1.
stat_of() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/${PORT[$1]}" || die "$1: cannot connect"
    printf 'stats\r\n' >&3
    while IFS= read -r -t 10 line <&3; do
        line=${line%$'\r'}
        [[ $line != END ]] || break
        [[ $line != "STAT $2 "* ]] || echo "${line#"STAT $2 "}"
    done
    exec 3>&-
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/${PID[$1]}/status"; }
# utime + stime of server $1 (all its threads), in clock ticks.
cpu_ticks() { local l; read -r l <"/proc/${PID[$1]}/stat"; l=${l##*) }; set -- $l; echo $((${12} + ${13})); }

# memcaslap configuration files: key and value sizes, command proportions.
cat >"$WORK/mixed.cfg" <<'EOF'
key
16 16 1
value
100 100 1
cmd
0 0.1
1 0.9
EOF
cat >"$WORK/load.cfg" <<'EOF'
key
16 16 1
value
100 100 1
cmd
0 1
EOF

# Runs memcaslap against server $1 with the remaining arguments; its output
# goes to $WORK/last.out. Fails on a non-zero exit or on get misses.
slap() {
    local s=$1
    shift
    alive "$s"
    timeout 3600 memcaslap -s "127.0.0.1:${PORT[$s]}" -T "$THREADS" -c "$CONCURRENCY" "$@" >"$WORK/last.out" 2>&1 ||
        { cat "$WORK/last.out" >&2; die "memcaslap against $s failed"; }
    cat "$WORK/last.out" >>"$WORK/memcaslap.log"
    local misses
    misses=$(awk '/^get_misses:/ { m = $2 } END { print m + 0 }' "$WORK/last.out")
    ((misses == 0)) || { cat "$WORK/last.out" >&2; die "memcaslap against $s: $misses get misses"; }
    alive "$s"
}
# Runs ferry-kvload against server $1 with the remaining arguments; output
# and failure handling as slap (it prints memcaslap's summary line, and it
# fails on a miss or any unexpected reply itself).
pipe() {
    local s=$1
    shift
    alive "$s"
    timeout 3600 "$KVLOAD" --server "127.0.0.1:${PORT[$s]}" --threads "$THREADS" --connections "$CONCURRENCY" \
        --depth "$DEPTH" --keys "$PIPE_KEYS" --key-size 16 --value-size 100 --get-ratio 0.9 "$@" >"$WORK/last.out" 2>&1 ||
        { cat "$WORK/last.out" >&2; die "ferry-kvload against $s failed"; }
    cat "$WORK/last.out" >>"$WORK/memcaslap.log"
    alive "$s"
}
# memcaslap's --time (e.g. 10s, 2m) in seconds.
seconds() { local n=${1%[smh]}; case $1 in *m) echo $((n * 60)) ;; *h) echo $((n * 3600)) ;; *) echo "$n" ;; esac; }
# ops/s of the last memcaslap run (its final "TPS:").
last_tps() { sed -n 's/^Run time: .* TPS: \([0-9]*\) .*/\1/p' "$WORK/last.out" | tail -1; }
last_ops() { sed -n 's/^Run time: .* Ops: \([0-9]*\) .*/\1/p' "$WORK/last.out" | tail -1; }

# --- machine facts -------------------------------------------------------------

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    DIRTY=" + uncommitted changes under crates/ (git diff HEAD sha256 $(git -C "$ROOT" diff HEAD -- crates Cargo.toml Cargo.lock | sha256sum | cut -c1-12))"
fi
CPU=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "ferry kv benchmark"
echo "  machine    $(nproc) CPUs, ${CPU:-unknown CPU}, kernel $(uname -r), $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "  ferry      $COMMIT$DIRTY"
echo "  memcached  $(memcached -V 2>&1 | head -1)"
echo "  memcaslap  $(memcaslap -V 2>&1 | head -1)"
echo "  load       $ITEMS items; throughput: $ROUNDS round(s) of $DURATION runs, $CONCURRENCY connections, $THREADS client threads, window $WIN_SIZE, multiget $DIVISION keys, pipeline depth $DEPTH over $PIPE_KEYS keys"
echo "  scratch    $WORK"
echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg) (start)"
echo

start_memcached
start_ferry ferry-os os
start_ferry ferry-fsync fsync
start_ferry ferry-memory memory
for s in "${SERVERS[@]}"; do
    printf '  %-13s pid %-7s port %s\n' "$s" "${PID[$s]}" "${PORT[$s]}"
done
echo

# --- 1. memory per item ----------------------------------------------------------

# The load always uses 32 connections (as documented above), whatever CONCURRENCY: with 64, memcaslap's
# generated keys repeat (99,968 distinct keys for 100,000 sets) and the memory figure would not hold.
LOAD_CONNS=32
# Enough window for every key to be new: --win_size is per connection, in units of 1024.
LOAD_WIN=$(((ITEMS + LOAD_CONNS * 1024 - 1) / (LOAD_CONNS * 1024)))k
declare -A RSS0 RSS1 LOADT
for s in "${SERVERS[@]}"; do
    [[ $(stat_of "$s" curr_items) == 0 ]] || die "$s is not empty"
    RSS0[$s]=$(rss_kib "$s")
done
for s in "${SERVERS[@]}"; do
    note "loading $ITEMS items into $s"
    CONCURRENCY=$LOAD_CONNS slap "$s" -F "$WORK/load.cfg" --win_size="$LOAD_WIN" --execute_number="$ITEMS"
    LOADT[$s]=$(last_tps)
    items=$(stat_of "$s" curr_items)
    [[ $items == "$ITEMS" ]] || die "$s holds $items items after loading $ITEMS"
    sleep 1 # let memcached's hash table expansion finish
    RSS1[$s]=$(rss_kib "$s")
    awk -v s="$s" -v a="${RSS0[$s]}" -v b="${RSS1[$s]}" -v n="$ITEMS" -v t="${LOADT[$s]}" \
        'BEGIN { printf "  %-13s RSS %7.1f -> %7.1f MiB   %6.1f bytes/item   (loaded at %d sets/s)\n", s, a / 1024, b / 1024, (b - a) * 1024 / n, t }'
done
echo

# --- 2. throughput ---------------------------------------------------------------

# The pipelined variant's key space, set on every server (not timed).
for s in "${SERVERS[@]}"; do
    note "setting the $PIPE_KEYS keys of the pipelined variant in $s"
    pipe "$s" --load --duration 0.01
done

VARIANTS=(single multiget pipelined)
declare -A TPS CPUOP
run_variant() { # $1 server, $2 variant, $3 duration
    case $2 in
        single) slap "$1" -F "$WORK/mixed.cfg" --win_size="$WIN_SIZE" --division=1 --time="$3" ;;
        multiget) slap "$1" -F "$WORK/mixed.cfg" --win_size="$WIN_SIZE" --division="$DIVISION" --time="$3" ;;
        pipelined) pipe "$1" --duration "$(seconds "$3")" ;;
    esac
}
n=${#SERVERS[@]}
for ((r = 0; r <= ROUNDS; r++)); do
    for ((v = 0; v < ${#VARIANTS[@]}; v++)); do
        var=${VARIANTS[v]}
        for ((i = 0; i < n; i++)); do
            s=${SERVERS[(i + r + v) % n]}
            c0=$(cpu_ticks "$s")
            run_variant "$s" "$var" "$([[ $r == 0 ]] && echo "$WARMUP" || echo "$DURATION")"
            c1=$(cpu_ticks "$s")
            tps=$(last_tps)
            ops=$(last_ops)
            [[ -n $tps && -n $ops && $ops -gt 0 ]] || { cat "$WORK/last.out" >&2; die "no result from memcaslap"; }
            if ((r > 0)); then
                TPS[$s,$var,$r]=$tps
                CPUOP[$s,$var,$r]=$(awk -v t=$((c1 - c0)) -v k="$TICK" -v o="$ops" 'BEGIN { printf "%.2f", t / k / o * 1e6 }')
            fi
            printf '  %-8s %-9s %-13s %9d ops/s   server CPU %5.2f s\n' \
                "$([[ $r == 0 ]] && echo warm-up || echo "round $r")" "$var" "$s" "$tps" \
                "$(awk -v t=$((c1 - c0)) -v k="$TICK" 'BEGIN { printf "%.2f", t / k }')"
        done
    done
done
echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg) (end)"
echo

# --- optional profile --------------------------------------------------------------

if [[ -n $PROFILE ]]; then
    mkdir -p "$PROFILE"
    for s in ferry-os ferry-fsync; do
        for var in "${VARIANTS[@]}"; do
            note "profiling $s, $var"
            perf record -g -o "$WORK/perf.data" -p "${PID[$s]}" >/dev/null 2>&1 &
            PERF_PID=$!
            sleep 0.5
            run_variant "$s" "$var" "$DURATION"
            kill -INT "$PERF_PID"
            wait "$PERF_PID" || true
            PERF_PID=""
            perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio 2>/dev/null >"$PROFILE/$s-$var.txt" || true
            echo "  profile    $PROFILE/$s-$var.txt ($(last_tps) ops/s under perf)"
        done
    done
    echo
fi

# --- report ------------------------------------------------------------------------

series() { local -n arr=$1; local r out=""; for ((r = 1; r <= ROUNDS; r++)); do out+="${arr[$2,$r]} "; done; echo "${out% }"; }
target_of() {
    case $1 in
        ferry-os) echo 1.0 ;;
        ferry-fsync) echo 0.8 ;;
        *) echo - ;;
    esac
}

echo "Throughput: 90% get / 10% set, 16-byte keys, 100-byte values, $CONCURRENCY connections, $DURATION per run; median of $ROUNDS round(s)"
for var in "${VARIANTS[@]}"; do
    declare -A MED=()
    for s in "${SERVERS[@]}"; do MED[$s]=$(series TPS "$s,$var" | median); done
    echo
    case $var in
        single) echo "single (memcaslap --division=1)" ;;
        multiget) echo "multiget (memcaslap --division=$DIVISION)" ;;
        pipelined) echo "pipelined (ferry-kvload --depth=$DEPTH: $DEPTH requests in flight per connection, one key per get)" ;;
    esac
    echo
    echo "| server | median ops/s | each round (ops/s) | server CPU µs/op (median) | ferry / memcached: of medians | each round | median of rounds | target |"
    echo "|---|---:|---|---:|---:|---|---:|---|"
    for s in "${SERVERS[@]}"; do
        cpu=$(series CPUOP "$s,$var" | median)
        if [[ $s == memcached ]]; then
            printf '| %s | %d | %s | %.2f | - | - | - | - |\n' "$s" "${MED[$s]}" "$(series TPS "$s,$var")" "$cpu"
            continue
        fi
        per=""
        for ((r = 1; r <= ROUNDS; r++)); do
            per+=$(awk -v a="${TPS[$s,$var,$r]}" -v b="${TPS[memcached,$var,$r]}" 'BEGIN { printf "%.2f ", a / b }')
        done
        t=$(target_of "$s")
        awk -v s="$s" -v m="${MED[$s]}" -v rs="$(series TPS "$s,$var")" -v cpu="$cpu" -v base="${MED[memcached]}" \
            -v per="${per% }" -v pm="$(median <<<"$per")" -v t="$t" '
            BEGIN {
                r = m / base
                v = (t == "-") ? "-" : sprintf("≥ %.1f: %s", t, (r >= t) ? "met" : "NOT met")
                printf "| %s | %d | %s | %.2f | %.2f | %s | %.2f | %s |\n", s, m, rs, cpu, r, per, pm, v
            }'
    done
done
echo

echo "Memory per item: $ITEMS sets of new keys (16-byte keys, 100-byte values); (VmRSS after - VmRSS before) / items"
echo
echo "| server | VmRSS before (KiB) | VmRSS after (KiB) | bytes/item | vs memcached | target | load (sets/s, diagnostic) |"
echo "|---|---:|---:|---:|---:|---|---:|"
for s in "${SERVERS[@]}"; do
    awk -v s="$s" -v a="${RSS0[$s]}" -v b="${RSS1[$s]}" -v n="$ITEMS" \
        -v ma="${RSS0[memcached]}" -v mb="${RSS1[memcached]}" -v lt="${LOADT[$s]}" '
        BEGIN {
            per = (b - a) * 1024 / n; base = (mb - ma) * 1024 / n; r = per / base
            t = "-"
            if (s == "ferry-os" || s == "ferry-fsync") t = sprintf("≤ 1.5: %s", r <= 1.5 ? "met" : "NOT met")
            if (s == "memcached") printf "| %s | %d | %d | %.1f | - | - | %d |\n", s, a, b, per, lt
            else printf "| %s | %d | %d | %.1f | %.2f | %s | %d |\n", s, a, b, per, r, t, lt
        }'
done
