#!/usr/bin/env bash
# Backup benchmark: PUT throughput with 0, 1 and 2 backup nodes, measured in
# one run and reported as ratios to the PUT with no backup node.
#
#   bench/backup.sh            1 GiB file, 6 rounds (plus an untimed warm-up round)
#   bench/backup.sh --quick    64 MiB, 1 round (smoke check)
#
# One `ferry serve` (default config: backup.ack = "all", so STORED waits
# until every in-sync node has verified, fsynced and renamed its copy). The
# nodes are `ferry backup --dir DIR` processes on this machine, each with its
# own directory on the same filesystem as the server's root. A step with K
# nodes:
#   1. (untimed) starts K nodes and waits until `ferry status --json` shows
#      K nodes in sync;
#   2. times `ferry put FILE --as put-N` end to end: the server writes,
#      hashes, fsyncs and renames, the nodes receive the file as it arrives
#      and commit it, and STORED comes after every node confirmed;
#   3. (untimed) compares the server's copy and every node's copy with the
#      input (cmp), stops the nodes by pid, deletes every copy.
# Every round runs 0, 1 and 2 nodes once; the order rotates from round to
# round, so with a multiple of 3 rounds each variant runs first, second and
# third equally often. Every timed step starts from the same state: the
# previous step's copies deleted, `sync` done (its writeback and the
# deletes on disk), the kernel's dirty and writeback pages drained (polled,
# at most 30 s), and the input read once more so the client reads it from
# the page cache. CPU time per step is read from /proc for the client
# (reaped children of this shell), the server and the nodes; it depends
# far less on other load than the wall time does.
#
# Environment:
#   SIZE       bytes to upload, IEC suffixes allowed (default 1G; --quick 64M)
#   ROUNDS     rounds (default 6; --quick 1)
#   BENCH_DIR  where the scratch directory is created (default ${TMPDIR:-/tmp})
#   NODE_DIR   where the nodes' directories are created (default: in the
#              scratch directory, on the server's filesystem). On a machine
#              with one disk, a node on that disk doubles what the disk must
#              write before STORED; NODE_DIR on another device (or a tmpfs,
#              standing in for a node's own disk) measures what the node
#              costs apart from that.
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
NAME=backup.sh

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help) usage "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done
if ((QUICK)); then
    SIZE=${SIZE:-64M} ROUNDS=${ROUNDS:-1}
else
    SIZE=${SIZE:-1G} ROUNDS=${ROUNDS:-6}
fi
need_tools cargo cmp sync head awk sed grep sort numfmt df getconf git nproc uname
((BASH_VERSINFO[0] >= 5)) || die "needs bash 5 (EPOCHREALTIME)"
BYTES=$(numfmt --from=iec "$SIZE") || die "bad SIZE: $SIZE"
[[ $BYTES =~ ^[0-9]+$ ]] && ((BYTES > 0)) || die "bad SIZE: $SIZE"
[[ $ROUNDS =~ ^[0-9]+$ ]] && ((ROUNDS > 0)) || die "bad ROUNDS: $ROUNDS"
TICK=$(getconf CLK_TCK)
FERRY=${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry

note "building: cargo build --release -p ferry-cli"
(cd "$ROOT" && cargo build --release -p ferry-cli --quiet) || die "build failed"
[[ -x $FERRY ]] || die "no binary at $FERRY"

PARENT=${BENCH_DIR:-${TMPDIR:-/tmp}}
mkdir -p "$PARENT"
# The input, the server's copy and two node copies at once, plus slack.
need_kib=$((BYTES * 5 / 1024 + 65536))
free_kib=$(df -Pk "$PARENT" | awk 'NR == 2 { print $4 }')
((free_kib >= need_kib)) ||
    die "$PARENT has $((free_kib / 1024)) MiB free; this run needs about $((need_kib / 1024)) MiB"

WORK=$(mktemp -d "$PARENT/ferry-backup-bench.XXXXXX")
if [[ -n ${NODE_DIR:-} ]]; then
    mkdir -p "$NODE_DIR"
    NODES=$(mktemp -d "$NODE_DIR/ferry-backup-nodes.XXXXXX")
else
    NODES=$WORK
fi
DATA=$WORK/server
FILES=$DATA/files
IN=$WORK/input
NODE_PIDS=()

stop_nodes() {
    local pid deadline
    for pid in "${NODE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || continue
        deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null; do
            ((SECONDS < deadline)) || { note "node $pid did not stop within 30 s"; break; }
            sleep 0.02
        done
    done
    NODE_PIDS=()
}

cleanup() {
    local rc=$?
    stop_nodes || true
    stop_ferry "$DATA" || true
    rm -rf "$WORK"
    [[ $NODES == "$WORK" ]] || rm -rf "$NODES"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$WORK/cache"
export FERRY_CACHE_DIR=$WORK/cache

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
# CPU clock ticks "user system" of process $1, or of its reaped children.
cpu_self() { local l; read -r l <"/proc/$1/stat"; l=${l##*) }; set -- $l; echo "${12} ${13}"; }
cpu_children() { local l; read -r l <"/proc/$1/stat"; l=${l##*) }; set -- $l; echo "${14} ${15}"; }

# Number of nodes `ferry status` shows in sync.
in_sync() { "$FERRY" status --json --data "$DATA" | grep -c '"state": "in-sync"' || true; }

# start_nodes K: K fresh nodes, in sync (60 s at most).
start_nodes() {
    local k=$1 i deadline=$((SECONDS + 60))
    for ((i = 1; i <= k; i++)); do
        "$FERRY" backup --dir "$NODES/node$i" --server "$ADDR" --quiet 2>>"$WORK/node$i.log" &
        NODE_PIDS+=($!)
    done
    until (($(in_sync) == k)); do
        ((SECONDS < deadline)) || die "$k nodes not in sync after 60 s (logs: $WORK/node*.log)"
        sleep 0.05
    done
}

same() { cmp -s "$IN" "$1" || die "$2: $1 differs from the input"; }

# KiB of dirty and writeback pages, machine-wide.
unwritten_kib() { awk '/^(Dirty|Writeback):/ { s += $2 } END { print s + 0 }' /proc/meminfo; }

# settle: the same starting point for every timed step. The previous
# step's copies are gone; `sync` writes back what it left (and the
# deletes); then wait, polling, until the machine's dirty and writeback
# pages are down to 64 MiB (other writers may keep them up: 30 s at most,
# then say so); then read the input so the client gets it from the cache.
settle() {
    local deadline=$((SECONDS + 30))
    sync
    until (($(unwritten_kib) <= 65536)); do
        if ((SECONDS >= deadline)); then
            note "dirty + writeback still $(($(unwritten_kib) / 1024)) MiB after 30 s (other writers?)"
            break
        fi
        sync
        sleep 0.1
    done
    cat "$IN" >/dev/null
}

declare -A T CU CS SU SS NU NS LOAD
CONTENDERS=(0 1 2)

# step K ROUND: one timed PUT with K nodes.
step() {
    local k=$1 r=$2 t0 t1 c0 c1 s0 s1 n0=() pid i nu=0 ns=0 name="put-$2-$1" a b
    stop_nodes
    start_nodes "$k"
    settle
    LOAD[$k,$r]=$(cut -d' ' -f1 /proc/loadavg)
    read -ra c0 <<<"$(cpu_children $$)"
    read -ra s0 <<<"$(cpu_self "$SERVER_PID")"
    for pid in "${NODE_PIDS[@]}"; do n0+=("$(cpu_self "$pid")"); done
    t0=$(now_us)
    "$FERRY" put "$IN" --as "$name" --server "$ADDR" 2>"$WORK/client.log" || {
        cat "$WORK/client.log" >&2
        die "ferry put failed"
    }
    t1=$(now_us)
    read -ra c1 <<<"$(cpu_children $$)"
    read -ra s1 <<<"$(cpu_self "$SERVER_PID")"
    for i in "${!NODE_PIDS[@]}"; do
        read -ra b <<<"${n0[$i]}"
        read -ra a <<<"$(cpu_self "${NODE_PIDS[$i]}")"
        nu=$((nu + a[0] - b[0]))
        ns=$((ns + a[1] - b[1]))
    done
    T[$k,$r]=$((t1 - t0))
    CU[$k,$r]=$((c1[0] - c0[0]))
    CS[$k,$r]=$((c1[1] - c0[1]))
    SU[$k,$r]=$((s1[0] - s0[0]))
    SS[$k,$r]=$((s1[1] - s0[1]))
    NU[$k,$r]=$nu
    NS[$k,$r]=$ns
    awk -v r="$r" -v k="$k" -v us="${T[$k,$r]}" -v b="$BYTES" -v l="${LOAD[$k,$r]}" \
        'BEGIN { printf "%-8s %d nodes %8.3f s  %8.1f MiB/s  (load %s)\n", r ? "round " r : "warm-up", k, us / 1e6, b / 1048576 / (us / 1e6), l }'
    grep -q retrying "$WORK/client.log" && note "the PUT reconnected (see $WORK/client.log)"
    same "$FILES/$name" "server copy, round $r, $k nodes"
    for ((i = 1; i <= k; i++)); do
        same "$NODES/node$i/$name" "node $i copy, round $r"
    done
    stop_nodes
    rm -f "$FILES/$name"
    for ((i = 1; i <= 2; i++)); do rm -f "$NODES/node$i/$name"; done
    sync
}

echo "ferry backup benchmark"
echo "  size       $BYTES bytes ($(numfmt --to=iec-i --suffix=B "$BYTES")), $ROUNDS round(s)"
machine_facts "$ROOT"
echo "  binary     $FERRY"
echo "  scratch    $WORK ($(df -P "$WORK" | awk 'NR == 2 { print $1 }'))"
echo "  nodes in   $NODES ($(df -PT "$NODES" | awk 'NR == 2 { print $1 ", " $2 }'))"

note "writing $BYTES random bytes"
head -c "$BYTES" /dev/urandom >"$IN"
sync "$IN"
start_ferry "$FERRY" "$DATA" "$WORK/server.log" --transfer-port 0 --no-http --no-kv --no-sync
SERVER_PID=$(<"$DATA/ferry.pid")
ADDR=$(listen_addr "$DATA" transfer)
[[ -n $ADDR ]] || die "no transfer address in $DATA/listen.json"
echo "  server     $ADDR"
((ROUNDS % 3 == 0)) || note "ROUNDS=$ROUNDS is not a multiple of 3: the variants do not run in each position equally often"
echo

n=${#CONTENDERS[@]}
for ((r = 0; r <= ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
        step "${CONTENDERS[(i + r) % n]}" "$r"
    done
done
echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg) (end)"
echo

series() { local -n arr=$1; local r out=""; for ((r = 1; r <= ROUNDS; r++)); do out+="${arr[$2,$r]:-0} "; done; echo "$out"; }

declare -A MED
for k in "${CONTENDERS[@]}"; do MED[$k]=$(series T "$k" | median); done

echo "Wall time of the PUT: median of $ROUNDS round(s); MiB/s = $BYTES bytes / median seconds"
echo
echo "| backup nodes | median s | MiB/s | each round (s) |"
echo "|---|---:|---:|---|"
for k in "${CONTENDERS[@]}"; do
    rounds=$(series T "$k" | awk '{ for (i = 1; i <= NF; i++) printf "%s%.3f", (i > 1 ? " " : ""), $i / 1e6 }')
    awk -v k="$k" -v us="${MED[$k]}" -v b="$BYTES" -v rs="$rounds" \
        'BEGIN { printf "| %d | %.3f | %.1f | %s |\n", k, us / 1e6, b / 1048576 / (us / 1e6), rs }'
done
echo

echo "Throughput ratio to 0 nodes = seconds with 0 nodes / seconds with K nodes; cost = 1 - ratio"
echo
echo "| nodes | ratio of medians | each round | median of rounds | cost (of medians) | target |"
echo "|---|---:|---|---:|---:|---|"
for k in 1 2; do
    per=""
    for ((r = 1; r <= ROUNDS; r++)); do
        per+=$(awk -v a="${T[0,$r]}" -v b="${T[$k,$r]}" 'BEGIN { printf "%.2f ", a / b }')
    done
    target="-"
    ((k == 1)) && target="cost ≤ 25 %"
    awk -v k="$k" -v a="${MED[0]}" -v b="${MED[$k]}" -v per="${per% }" -v pm="$(median <<<"$per")" -v t="$target" '
        BEGIN {
            r = a / b
            v = ""
            if (t != "-") v = (1 - r) <= 0.25 ? ": met" : ": NOT met"
            printf "| %d | %.2f | %s | %.2f | %.0f %% | %s%s |\n", k, r, per, pm, (1 - r) * 100, t, v
        }'
done
echo

echo "CPU seconds per PUT (median): client = ferry put, server = ferry serve, nodes = all ferry backup processes"
echo
echo "| nodes | client user | client sys | server user | server sys | nodes user | nodes sys |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for k in "${CONTENDERS[@]}"; do
    printf "| %s |" "$k"
    for a in CU CS SU SS NU NS; do
        awk -v t="$(series "$a" "$k" | median)" -v c="$TICK" 'BEGIN { printf " %.2f |", t / c }'
    done
    echo
done
echo

echo "CPU seconds per PUT, all processes (client + server + nodes, user + sys): median, and what each node adds"
echo
echo "| nodes | median s | each round (s) | added per node (of medians) |"
echo "|---|---:|---|---:|"
declare -A ALL
for k in "${CONTENDERS[@]}"; do
    per=""
    for ((r = 1; r <= ROUNDS; r++)); do
        per+="$((CU[$k,$r] + CS[$k,$r] + SU[$k,$r] + SS[$k,$r] + NU[$k,$r] + NS[$k,$r])) "
    done
    ALL[$k]=$(median <<<"$per")
    awk -v k="$k" -v m="${ALL[$k]}" -v z="${ALL[0]}" -v per="$per" -v c="$TICK" '
        BEGIN {
            n = split(per, a, " "); rs = ""
            for (i = 1; i <= n; i++) rs = rs sprintf("%s%.2f", i > 1 ? " " : "", a[i] / c)
            printf "| %d | %.2f | %s | %s |\n", k, m / c, rs, k ? sprintf("%.2f", (m - z) / c / k) : "-"
        }'
done
stop_ferry "$DATA"
