#!/usr/bin/env bash
# Live-upgrade benchmark: a ferry server holding many connections, some of
# them mid-transfer, is upgraded in place (`ferry upgrade` through the admin
# socket), once and then many times in a row. Measured: the pause gap of each
# upgrade and the sessions it moved; checked: every upgrade succeeds, every
# transfer finishes in one connection attempt with the right BLAKE3, and
# every idle connection still answers afterwards.
#
#   bench/upgrade.sh            full run, two scenarios against one server:
#                                 1. 1000 connections (20 transferring), 1 upgrade
#                                 2. 1000 connections (20 transferring), 100 upgrades in a row
#   bench/upgrade.sh --quick    smoke run: 50 connections (4 transferring), 1 upgrade, then 5
#   bench/upgrade.sh --keep     keep the scratch directory (server log, data) afterwards
#
# The load comes from bench/loadgen (ferry-loadgen): idle connections are raw
# TCP connections that send nothing until the end, when each must answer a
# LIST with END; transfers are half GETs of a pre-existing file and half PUTs
# of generated data, rate-limited so that they outlast the upgrades, with
# retries off (a dropped connection fails the transfer). The server is a copy
# of target/release/ferry taken right after the build, so a concurrent
# rebuild cannot change what an upgrade starts; every upgrade re-executes
# that same binary. The server is stopped by the pid in DATA/ferry.pid
# (which changes at every upgrade), never by name.
#
# Targets (scenario 2): 0 failed upgrades, transfers or idle connections, and
# a p99 pause gap under 10 ms. The exit status is 1 if anything failed
# (upgrade, transfer, idle connection); a missed gap target is reported but
# does not change the exit status.
#
# Environment:
#   CONNECTIONS  connections per scenario (default 1000; --quick 50)
#   TRANSFERS    of which transferring (default 20; --quick 4)
#   UPGRADES     upgrades in a row in scenario 2 (default 100; --quick 5)
#   SIZE         bytes of the GET file and of each PUT, IEC suffixes allowed
#                (default 32M; --quick 12M; above the server's 8 MiB GET window,
#                so that GETs are still being sent during the upgrades)
#   RATE         rate limit per transfer in bytes/s (default 512K; --quick 1M)
#   BENCH_DIR    where the scratch directory is created (default ${TMPDIR:-/tmp})
#   FERRY_LOG    the server's log filter (default info)
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
NAME=upgrade.sh

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
    CONNECTIONS=${CONNECTIONS:-50} TRANSFERS=${TRANSFERS:-4} UPGRADES=${UPGRADES:-5} SIZE=${SIZE:-12M} RATE=${RATE:-1M}
else
    CONNECTIONS=${CONNECTIONS:-1000} TRANSFERS=${TRANSFERS:-20} UPGRADES=${UPGRADES:-100} SIZE=${SIZE:-32M} RATE=${RATE:-512K}
fi
export FERRY_LOG=${FERRY_LOG:-info}

for tool in cargo awk sed head grep numfmt git nproc uname; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
for v in CONNECTIONS TRANSFERS UPGRADES; do
    [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} > 0)) || die "bad $v: ${!v}"
done
((TRANSFERS <= CONNECTIONS)) || die "TRANSFERS ($TRANSFERS) exceeds CONNECTIONS ($CONNECTIONS)"
BYTES=$(numfmt --from=iec "$SIZE") || die "bad SIZE: $SIZE"
RATE_BPS=$(numfmt --from=iec "$RATE") || die "bad RATE: $RATE"
((BYTES > 0 && RATE_BPS > 0)) || die "SIZE and RATE must be positive"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release

# --- open files ----------------------------------------------------------------

# The server and the load generator each hold one descriptor per connection
# (and during an upgrade the old and the new server both do).
need=$((CONNECTIONS + TRANSFERS + 256))
hard=$(ulimit -Hn)
[[ $hard == unlimited ]] || ((hard >= need)) ||
    die "the open-file hard limit is $hard but $CONNECTIONS connections need about $need; raise it (as root: ulimit -Hn $need)"
ulimit -n "$hard" 2>/dev/null || ulimit -n "$need" || die "cannot raise the open-file limit to $need"

# --- build ---------------------------------------------------------------------

note "building: cargo build --release -p ferry-cli -p ferry-loadgen"
(cd "$ROOT" && cargo build --release -p ferry-cli -p ferry-loadgen --quiet) || die "build failed"

# --- scratch directory, cleanup ------------------------------------------------

PARENT=${BENCH_DIR:-${TMPDIR:-/tmp}}
mkdir -p "$PARENT"
WORK=$(mktemp -d "$PARENT/ferry-upgrade.XXXXXX")
DATA=$WORK/data
LOG=$WORK/server.log
mkdir -p "$WORK/bin" "$DATA/files"
cp "$TARGET/ferry" "$TARGET/ferry-loadgen" "$WORK/bin/" || die "no release binaries in $TARGET"
FERRY=$WORK/bin/ferry
LOADGEN=$WORK/bin/ferry-loadgen
STARTED=0

# Stops whichever process the pid file names (it changes at every upgrade).
stop_server() {
    ((STARTED)) || return 0
    STARTED=0
    local pid deadline=$((SECONDS + 30))
    pid=$(cat "$DATA/ferry.pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || { note "server $pid did not stop within 30 s"; return 1; }
        sleep 0.05
    done
}

cleanup() {
    local rc=$?
    stop_server || true
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

# --- machine facts ---------------------------------------------------------------

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "unknown (not a git checkout)")
DIRTY=""
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    DIRTY=" + uncommitted changes (git diff HEAD sha256 $(git -C "$ROOT" diff HEAD | sha256sum | cut -c1-12))"
fi
CPU=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "ferry live-upgrade benchmark"
echo "  machine    $(nproc) CPUs, ${CPU:-unknown CPU}, kernel $(uname -r)"
echo "  ferry      $COMMIT$DIRTY"
echo "  load       $CONNECTIONS connections, $TRANSFERS transferring ($((TRANSFERS - TRANSFERS / 2)) GET, $((TRANSFERS / 2)) PUT), $BYTES bytes each at $RATE_BPS B/s"
echo "  limits     open files $(ulimit -n)"
echo "  scratch    $WORK"
echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg) (start)"

# --- server ----------------------------------------------------------------------

head -c "$BYTES" /dev/urandom >"$DATA/files/bench-src"
"$FERRY" serve --data "$DATA" --transfer-port 0 --no-http --no-kv --no-sync >/dev/null 2>>"$LOG" &
launched=$!
STARTED=1
deadline=$((SECONDS + 60))
until [[ -s $DATA/listen.json && -s $DATA/ferry.pid ]]; do
    kill -0 "$launched" 2>/dev/null || die "ferry serve exited at start"
    ((SECONDS < deadline)) || die "no listen.json after 60 s"
    sleep 0.05
done
echo "  server     pid $(<"$DATA/ferry.pid"), $(sed -n 's/.*"transfer": *"\([^"]*\)".*/\1/p' "$DATA/listen.json")"
echo

# --- scenarios -------------------------------------------------------------------

declare -A R1 R2
FAILED=0

# Runs ferry-loadgen with $2 upgrades; its summary line goes into array $1.
scenario() {
    local -n res=$1
    local upgrades=$2 out=$WORK/loadgen-$1.out rc=0
    "$LOADGEN" --data "$DATA" --connections "$CONNECTIONS" --transfers "$TRANSFERS" --upgrades "$upgrades" \
        --get-file bench-src --put-bytes "$BYTES" --rate "$RATE_BPS" --work "$WORK/loadgen" | tee "$out" ||
        rc=${PIPESTATUS[0]}
    ((rc == 0)) || FAILED=1
    local line kv
    line=$(grep '^summary ' "$out" | tail -n 1) || die "ferry-loadgen gave no summary (exit status $rc)"
    for kv in ${line#summary }; do res[${kv%%=*}]=${kv#*=}; done
    res[rc]=$rc
}

echo "== scenario 1: $CONNECTIONS connections ($TRANSFERS transferring), 1 upgrade"
scenario R1 1
echo
echo "== scenario 2: $CONNECTIONS connections ($TRANSFERS transferring), $UPGRADES upgrades in a row"
scenario R2 "$UPGRADES"
echo
echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg) (end)"
stop_server || true

# --- report ----------------------------------------------------------------------

us_ms() { [[ $1 == - ]] && echo - || awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }

echo
echo "| scenario | upgrades ok / failed | sessions moved (min-max) | session gap p50 / p99 / max ms | client gap p50 / p99 / max ms | total handover p50 / p99 ms | transfer failures | idle lost |"
echo "|---|---|---|---:|---:|---:|---:|---:|"
for s in R1 R2; do
    declare -n r=$s
    printf "| %s | %s / %s | %s-%s | %s / %s / %s | %s / %s / %s | %s / %s | %s of %s | %s of %s |\n" \
        "${s#R}: ${r[connections]} conns, ${r[upgrades]} upgrade(s)" "${r[upgrades_ok]}" "${r[upgrades_failed]}" \
        "${r[moved_min]}" "${r[moved_max]}" \
        "$(us_ms "${r[session_gap_p50_us]}")" "$(us_ms "${r[session_gap_p99_us]}")" "$(us_ms "${r[session_gap_max_us]}")" \
        "$(us_ms "${r[client_gap_p50_us]}")" "$(us_ms "${r[client_gap_p99_us]}")" "$(us_ms "${r[client_gap_max_us]}")" \
        "$(us_ms "${r[gap_p50_us]}")" "$(us_ms "${r[gap_p99_us]}")" \
        "${r[transfer_failures]}" "${r[transfers]}" "${r[idle_lost]}" "$((r[connections] - r[transfers]))"
    unset -n r
done
echo
echo "session gap: each moved session's pause in the old process to its first run in the new (CLOCK_MONOTONIC),"
echo "pooled over all sessions and upgrades; client gap: PAUSED to RESUMED as each transfer read them;"
echo "total handover: the old process stopping its first accept loop to the new one having resumed every session."
echo

failures=$((R2[upgrades_failed] + R2[transfer_failures] + R2[idle_lost]))
if ((failures == 0)) && [[ ${R2[upgrades_ok]} == "${R2[upgrades]}" ]]; then
    echo "target: 0 failures in scenario 2 ................ met"
else
    echo "target: 0 failures in scenario 2 ................ NOT MET ($failures failures)"
fi
if [[ ${R2[session_gap_p99_us]} == - ]]; then
    echo "target: p99 pause gap < 10 ms in scenario 2 ..... NOT MET (no gap measured)"
elif ((R2[session_gap_p99_us] < 10000)); then
    echo "target: p99 pause gap < 10 ms in scenario 2 ..... met (per session: $(us_ms "${R2[session_gap_p99_us]}") ms)"
else
    echo "target: p99 pause gap < 10 ms in scenario 2 ..... NOT MET (per session: $(us_ms "${R2[session_gap_p99_us]}") ms)"
fi
for s in R1 R2; do
    declare -n r=$s
    ((r[transfers_spanning] == r[transfers])) ||
        echo "note: scenario ${s#R}: only ${r[transfers_spanning]} of ${r[transfers]} transfers were mid-transfer at every upgrade (raise SIZE or lower RATE)"
    unset -n r
done

generations=$(grep -c 'took over from the old process' "$LOG" || true)
warnings=$(grep -cE ' (WARN|ERROR) ' "$LOG" || true)
echo "server log: $generations takeovers logged, $warnings WARN/ERROR lines"
# Load-independent: the CPU each process that handed over used in its whole
# life (adopting, serving until the next upgrade, handing over).
cpu=$(sed -n 's/.*handed over to the new process.*cpu_us=\([0-9]*\).*/\1/p; s/.*cpu_us=\([0-9]*\).*handed over to the new process.*/\1/p' "$LOG" |
    awk '{ s += $1; n++ } END { if (n) printf "mean %.1f ms per process (n=%d)", s / n / 1000, n }')
echo "server CPU: ${cpu:-not logged} (user + system over each handing-over process's life; both scenarios)"
grep -E ' (WARN|ERROR) ' "$LOG" | head -n 20 || true
((FAILED == 0)) || die "ferry-loadgen reported failures (see above)"
