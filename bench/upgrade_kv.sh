#!/usr/bin/env bash
# Live upgrade with a large kv store: does the pause grow with the data?
#
#   bench/upgrade_kv.sh           1 GiB of kv data, 10 upgrades before and 10 after loading it
#   bench/upgrade_kv.sh --quick   64 MiB, 3 upgrades each (smoke run)
#   bench/upgrade_kv.sh --keep    keep the scratch directory afterwards
#
# One ferry server (kv on, durability "os", max_memory 4 GiB so that 1 GiB
# of values fits) holds CONNECTIONS idle kv connections throughout. It is
# upgraded UPGRADES times with an almost empty store, then KV_BYTES of values
# (VALUE_SIZE bytes each, content derived from the key) are stored through
# the protocol, and it is upgraded UPGRADES times again. Reported for both
# phases: the pause gap (p50 / p99 / max, as `ferry upgrade` measures it:
# from the first paused session to the last resumed one) and the whole
# upgrade's wall time (which includes the new process reading the log while
# the old one still serves). Checked at the end: every idle connection still
# answers on its original socket, and a random sample of 2,000 stored keys
# holds exactly the bytes written.
#
# The claim under test (docs/upgrade.md): the new process opens and replays
# the log before the pause and catches up only on the tail appended since,
# so the gap stays flat while the wall time grows with the data.
#
# The server runs a copy of target/release/ferry taken after the build and
# is stopped by the pid in DATA/ferry.pid, never by name.
#
# Environment:
#   KV_BYTES     bytes of values to load (default 1G; --quick 64M; IEC suffixes)
#   VALUE_SIZE   bytes per value (default 1000)
#   UPGRADES     upgrades per phase (default 10; --quick 3)
#   CONNECTIONS  idle kv connections held across every upgrade (default 100)
#   BENCH_DIR    where the scratch directory is created (default ${TMPDIR:-/tmp})
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
NAME=upgrade_kv.sh

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
    KV_BYTES=${KV_BYTES:-64M} UPGRADES=${UPGRADES:-3}
else
    KV_BYTES=${KV_BYTES:-1G} UPGRADES=${UPGRADES:-10}
fi
VALUE_SIZE=${VALUE_SIZE:-1000} CONNECTIONS=${CONNECTIONS:-100}
export FERRY_LOG=${FERRY_LOG:-info}
need_tools cargo python3 awk sed sort numfmt git nproc uname
BYTES=$(numfmt --from=iec "$KV_BYTES") || die "bad KV_BYTES: $KV_BYTES"
for v in VALUE_SIZE UPGRADES CONNECTIONS; do
    [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} > 0)) || die "bad $v: ${!v}"
done

note "building: cargo build --release -p ferry-cli"
(cd "$ROOT" && cargo build --release -p ferry-cli --quiet) || die "build failed"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release

PARENT=${BENCH_DIR:-${TMPDIR:-/tmp}}
mkdir -p "$PARENT"
WORK=$(mktemp -d "$PARENT/ferry-upgrade-kv.XXXXXX")
DATA=$WORK/data
LOG=$WORK/server.log
mkdir -p "$WORK/bin" "$DATA"
cp "$TARGET/ferry" "$WORK/bin/" || die "no release binary in $TARGET"
FERRY=$WORK/bin/ferry
FILL=$ROOT/bench/kv_fill.py
HOLDER=0

cleanup() {
    local rc=$?
    ((HOLDER)) && kill "$HOLDER" 2>/dev/null
    stop_ferry "$DATA" || true
    if ((rc != 0)) && [[ -s $LOG ]]; then
        note "last lines of the server log ($LOG):"
        tail -n 30 "$LOG" >&2
    fi
    if ((KEEP)); then note "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "ferry live upgrade with a large kv store"
machine_facts "$ROOT"
echo "  load       $CONNECTIONS idle kv connections, $UPGRADES upgrades per phase, $BYTES bytes of values in $VALUE_SIZE-byte items"
echo "  scratch    $WORK"

cat >"$WORK/ferry.toml" <<EOF
[kv]
durability = "os"
max_memory = $((4 << 30))
EOF
start_ferry "$FERRY" "$DATA" "$LOG" --config "$WORK/ferry.toml" --transfer-port 0 --kv-port 0 --no-http --no-sync
KV=$(listen_addr "$DATA" kv)
echo "  server     pid $(<"$DATA/ferry.pid"), kv on $KV"
echo

# Idle connections, held by a coprocess until the end.
coproc HOLD { exec python3 "$FILL" hold "$KV" --connections "$CONNECTIONS"; }
HOLDER=$HOLD_PID
read -r -t 60 ready <&"${HOLD[0]}" || die "the connection holder did not start"
[[ $ready == ready ]] || die "the connection holder: $ready"

# Runs $2 upgrades; appends "gap_us wall_ms moved" lines to file $1.
upgrades() {
    local out=$1 n=$2 i t0 t1 json
    for ((i = 1; i <= n; i++)); do
        t0=$(date +%s%N)
        json=$("$FERRY" upgrade --json --data "$DATA") || die "upgrade $i failed"
        t1=$(date +%s%N)
        echo "$(json_field "$json" pause_gap_us) $(((t1 - t0) / 1000000)) $(json_field "$json" sessions_moved)" >>"$out"
    done
}

# "p50 p99 max" of column $2 in file $1.
percentiles() {
    sort -n -k"$2","$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END {
        p50 = v[int((NR - 1) * 0.50) + 1]; p99 = v[int((NR - 1) * 0.99) + 1];
        printf "%s %s %s", p50, p99, v[NR] }'
}

note "phase 1: $UPGRADES upgrades with an empty store"
python3 "$FILL" fill "$KV" --bytes $((VALUE_SIZE * 100)) --value-size "$VALUE_SIZE" --prefix small || die "small fill failed"
upgrades "$WORK/empty.txt" "$UPGRADES"
LOG_EMPTY=$(du -sb "$DATA/kv" | cut -f1)

note "loading $BYTES bytes of values"
t0=$(date +%s)
python3 "$FILL" fill "$KV" --bytes "$BYTES" --value-size "$VALUE_SIZE" || die "fill failed"
FILL_S=$(($(date +%s) - t0))
LOG_FULL=$(du -sb "$DATA/kv" | cut -f1)
RSS_FULL=$(awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$(<"$DATA/ferry.pid")/status")

note "phase 2: $UPGRADES upgrades with $(numfmt --to=iec "$LOG_FULL") of log"
upgrades "$WORK/full.txt" "$UPGRADES"

note "checking the data and the held connections"
CHECK=$(python3 "$FILL" check "$KV" --bytes "$BYTES" --value-size "$VALUE_SIZE" 2>&1) || die "data check failed: $CHECK"
echo >&"${HOLD[1]}"
read -r -t 60 held <&"${HOLD[0]}" || die "the connection holder did not report"
wait "$HOLDER" || die "connections were lost: $held"
HOLDER=0

ms() { awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }
echo
echo "| phase | kv log | upgrades | sessions moved | gap p50 ms | gap p99 ms | gap max ms | wall p50 ms | wall max ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for phase in empty full; do
    f=$WORK/$phase.txt
    read -r g50 g99 gmax <<<"$(percentiles "$f" 1)"
    read -r w50 _ wmax <<<"$(percentiles "$f" 2)"
    moved=$(awk '{ print $3 }' "$f" | sort -n | uniq | tr '\n' ' ')
    size=$([[ $phase == empty ]] && echo "$LOG_EMPTY" || echo "$LOG_FULL")
    printf "| %s | %s | %s | %s| %s | %s | %s | %s | %s |\n" "$phase" "$(numfmt --to=iec "$size")" "$(wc -l <"$f")" \
        "$moved" "$(ms "$g50")" "$(ms "$g99")" "$(ms "$gmax")" "$w50" "$wmax"
done
echo
echo "loaded $BYTES bytes in ${FILL_S} s; server RSS $(numfmt --to=iec "$RSS_FULL") when full"
echo "$CHECK" | tail -n 1
echo "$held"
