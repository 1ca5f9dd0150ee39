#!/usr/bin/env bash
# HTTP benchmark: ferry's HTTP gateway and file cache against nginx, side by
# side in one run, reported as ratios; then ferry's memory under 100
# streamed downloads and 100 cached-file clients at once.
#
#   bench/http.sh            3 rounds of 10 s wrk runs, a 1 GiB file, memory with a 256 MiB file (about 15 min)
#   bench/http.sh --quick    1 round of 3 s runs, a 256 MiB file, memory with 32 MiB (smoke check, about 3 min)
#   bench/http.sh --keep     keep the scratch directory (logs, configs, wrk output)
#
# Servers, all started by this script, all serving the same directory
# (SCRATCH/files) at the same paths (/files/NAME), all running for the whole run:
#   ferry          ferry serve --data DIR --root SCRATCH/files --http-port 0
#                  --transfer-port 0 --no-kv --no-sync --config FILE, FILE
#                  giving [cache] max_bytes = CACHE_BYTES (max_item_bytes and
#                  policy stay at their defaults: 8 MiB, s3fifo)
#   nginx          nginx (Debian package) from its own config in the scratch
#                  directory: worker_processes = ferry's HTTP worker threads
#                  (http.workers = 0: one per CPU, i.e. `nproc`), sendfile on, tcp_nopush
#                  on, open_file_cache max=10000 inactive=60s, access_log off,
#                  keepalive_requests 1000000 (ferry does not limit requests per
#                  connection either), listening on 127.0.0.1, daemon off
#   ferry-before   only if FERRY_BEFORE names a ferry binary: that binary,
#                  started like ferry (for before/after figures in one run)
#   raw            for the large file only: a python server that answers every
#                  connection with a fixed HTTP/1.1 200 head and the file by
#                  sendfile(2): the ceiling of a loopback copy with curl as client
# ferry runs a copy of target/release/ferry taken right after the build; every
# server is stopped by its pid (nginx, raw: our children; ferry:
# DIR/ferry.pid), never by name.
#
# 1. Small cached files: wrk -t THREADS -c CONNECTIONS -d DURATION on a 1 KiB
#    and on a 64 KiB file (both warmed first: ferry serves them from its
#    cache, nginx from its open_file_cache and the page cache). Reported:
#    median req/s over the rounds, ferry / nginx of the medians and within
#    each round, and the server's CPU time (all its threads or processes)
#    per request.
# 2. Large file: curl -s -o /dev/null -w '%{speed_download}' of a BIG file
#    (page cache warm) from every server, raw included. Reported: median
#    MiB/s and ratios ferry / nginx and ferry / raw.
#    Round 0 is an untimed warm-up; in every round the order of the servers
#    rotates, so the shared machine's noise hits them alike.
# 3. Memory (ferry only; every run on a freshly started process, so that
#    VmHWM covers that run alone): MEM_CLIENTS concurrent curl downloads of a
#    MEM_SIZE file (over max_item_bytes: streamed, never cached) while wrk -c
#    MEM_CLIENTS requests a mix of MIX_FILES files of 1 KiB to 4 MiB (more
#    than the cache holds, so it stays full and evicts); VmRSS is sampled
#    from /proc every 100 ms, VmHWM read at the end. Loads: both together,
#    and (not with --quick) the downloads alone and the mix alone; each with
#    glibc's allocator as it comes and with MALLOC_MMAP_THRESHOLD_=131072
#    (which shows how much of the peak is memory glibc keeps after a free).
#    Reported against CACHE_BYTES plus the bound on streamed pieces (64 MiB
#    plus two 64 KiB pieces per connection).
#
# Targets: ferry >= 1.0x nginx's req/s on both cached files, >= 0.8x nginx's
# throughput on the large file.
#
# Needs nginx, wrk, curl and python3 (apt-get install -y nginx wrk curl python3).
#
# Environment:
#   ROUNDS        timed rounds (default 3; --quick 1)
#   DURATION      wrk -d per timed run (default 10s; --quick 3s)
#   WARMUP        wrk -d per warm-up run (default 3s; --quick 1s)
#   CONNECTIONS   wrk -c for the cached files (default 64)
#   THREADS       wrk -t (default 2)
#   BIG           size of the large file, IEC suffixes allowed (default 1G; --quick 256M)
#   CACHE_BYTES   ferry's [cache] max_bytes (default 64M, ferry's default)
#   MEM_CLIENTS   concurrent downloads, and wrk connections, in the memory test (default 100)
#   MEM_SIZE      size of the streamed file in the memory test (default 256M; --quick 32M)
#   MIX_FILES     files in the memory test's cached mix (default 120, about 74 MiB)
#   FERRY_BEFORE  a second ferry binary to measure side by side (optional)
#   BENCH_DIR     where the scratch directory is created (default ${TMPDIR:-/tmp})
#   PROFILE       if set to a directory: after the rounds, one more wrk run per
#                 cached file against ferry under `perf record -e cpu-clock -g`;
#                 `perf report --no-children --sort symbol` goes to
#                 PROFILE/ferry-<file>.txt
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
NAME=http.sh

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
    ROUNDS=${ROUNDS:-1} DURATION=${DURATION:-3s} WARMUP=${WARMUP:-1s} BIG=${BIG:-256M} MEM_SIZE=${MEM_SIZE:-32M}
else
    ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s} WARMUP=${WARMUP:-3s} BIG=${BIG:-1G} MEM_SIZE=${MEM_SIZE:-256M}
fi
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
CACHE_BYTES=${CACHE_BYTES:-64M}
MEM_CLIENTS=${MEM_CLIENTS:-100}
MIX_FILES=${MIX_FILES:-120}
FERRY_BEFORE=${FERRY_BEFORE:-}
PROFILE=${PROFILE:-}

FERRY=${CARGO_TARGET_DIR:-$ROOT/target}/release/ferry

# --- tools, arguments ----------------------------------------------------------

missing=()
for tool in nginx wrk curl python3; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "needs ${missing[*]}: apt-get install -y ${missing[*]}"
for tool in cargo awk sed sort git nproc uname getconf numfmt ps df head cmp; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
[[ -z $PROFILE ]] || command -v perf >/dev/null || die "PROFILE needs perf"
for v in ROUNDS CONNECTIONS THREADS MEM_CLIENTS MIX_FILES; do
    [[ ${!v} =~ ^[0-9]+$ ]] && ((${!v} > 0)) || die "bad $v: ${!v}"
done
for v in DURATION WARMUP; do
    [[ ${!v} =~ ^[0-9]+[smh]$ ]] || die "bad $v: ${!v} (e.g. 10s)"
done
BIG_BYTES=$(numfmt --from=iec "$BIG" 2>/dev/null) && ((BIG_BYTES > 0)) || die "bad BIG: $BIG"
MEM_BYTES=$(numfmt --from=iec "$MEM_SIZE" 2>/dev/null) && ((MEM_BYTES > 0)) || die "bad MEM_SIZE: $MEM_SIZE"
CACHE_MAX=$(numfmt --from=iec "$CACHE_BYTES" 2>/dev/null) && ((CACHE_MAX > 0)) || die "bad CACHE_BYTES: $CACHE_BYTES"
# ferry's default [cache] max_item_bytes: the memory test's stream must be larger.
MAX_ITEM=$((8 << 20))
((MEM_BYTES > MAX_ITEM)) || die "MEM_SIZE must be over max_item_bytes (8 MiB), so that it is streamed"
if [[ -n $FERRY_BEFORE ]]; then
    [[ -x $FERRY_BEFORE ]] || die "FERRY_BEFORE is not an executable: $FERRY_BEFORE"
fi
TICK=$(getconf CLK_TCK)
# tokio's multi-thread runtime (crates/cli/src/main.rs) starts one worker per CPU.
WORKERS=$(nproc)

# --- build ---------------------------------------------------------------------

note "building: cargo build --release -p ferry-cli"
(cd "$ROOT" && cargo build --release -p ferry-cli --quiet) || die "build failed"
[[ -x $FERRY ]] || die "no binary at $FERRY"

# --- scratch directory, servers, cleanup -----------------------------------------

PARENT=${BENCH_DIR:-${TMPDIR:-/tmp}}
mkdir -p "$PARENT"
need_kib=$(((BIG_BYTES + MEM_BYTES + (MIX_FILES << 20)) / 1024 + 131072))
free_kib=$(df -Pk "$PARENT" | awk 'NR == 2 { print $4 }')
((free_kib >= need_kib)) || die "$PARENT has $((free_kib / 1024)) MiB free; this run needs about $((need_kib / 1024)) MiB"
WORK=$(mktemp -d "$PARENT/ferry-httpbench.XXXXXX")
# The servers run copies taken now, so that a concurrent rebuild of target/
# cannot change what runs (or what perf resolves against).
mkdir -p "$WORK/bin"
cp "$FERRY" "$WORK/bin/ferry" || { rm -rf "$WORK"; die "cannot copy $FERRY"; }
FERRY=$WORK/bin/ferry
if [[ -n $FERRY_BEFORE ]]; then
    cp "$FERRY_BEFORE" "$WORK/bin/ferry-before" || { rm -rf "$WORK"; die "cannot copy $FERRY_BEFORE"; }
    FERRY_BEFORE=$WORK/bin/ferry-before
fi
FILES=$WORK/files
mkdir -p "$FILES/mix" "$WORK/nginx" "$WORK/out"

SERVERS=(ferry nginx)
[[ -z $FERRY_BEFORE ]] || SERVERS+=(ferry-before)
declare -A PID PORT BIN
BIN[ferry]=$FERRY
BIN[ferry-before]=$FERRY_BEFORE
PERF_PID=""
BG_PIDS=()
# Extra environment for the next ferry started (the memory test's allocator setting).
FERRY_ENV=()

stop_pid() {
    local pid=$1 deadline=$((SECONDS + 30))
    kill "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || { note "process $pid did not stop within 30 s"; return 1; }
        sleep 0.05
    done
}

cleanup() {
    local rc=$? s p
    if [[ -n $PERF_PID ]]; then kill -INT "$PERF_PID" 2>/dev/null || true; fi
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for s in "${!PID[@]}"; do
        if [[ -n ${PID[$s]} ]]; then stop_pid "${PID[$s]}" || true; fi
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

# Waits until $2 answers 200 for /files/small.bin; $1 names the server, $3 its pid.
wait_http() {
    local name=$1 url=$2 pid=$3 deadline=$((SECONDS + 30))
    until curl -sf -o /dev/null "$url/files/small.bin"; do
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2 2>/dev/null || true; die "$name exited at start"; }
        ((SECONDS < deadline)) || die "$name not answering after 30 s"
        sleep 0.05
    done
}

# $1 server name (its binary is BIN[$1]).
start_ferry() {
    local name=$1 dir=$WORK/$1-data deadline=$((SECONDS + 60)) launched
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '[cache]\nmax_bytes = %d\n' "$CACHE_MAX" >"$WORK/$name.toml"
    env "${FERRY_ENV[@]}" "${BIN[$name]}" serve --data "$dir" --root "$FILES" --http-port 0 --transfer-port 0 --no-kv --no-sync \
        --config "$WORK/$name.toml" >>"$WORK/$name.log" 2>&1 &
    launched=$!
    until [[ -s $dir/listen.json && -s $dir/ferry.pid ]]; do
        kill -0 "$launched" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name: ferry serve exited"; }
        ((SECONDS < deadline)) || { cat "$WORK/$name.log" >&2; die "$name: no listen.json after 60 s"; }
        sleep 0.05
    done
    PID[$name]=$(<"$dir/ferry.pid")
    PORT[$name]=$(sed -n 's/.*"http": *"127\.0\.0\.1:\([0-9]*\)".*/\1/p' "$dir/listen.json")
    [[ -n ${PORT[$name]} ]] || die "$name: no http address in $dir/listen.json"
    wait_http "$name" "http://127.0.0.1:${PORT[$name]}" "${PID[$name]}"
}

start_nginx() {
    local port user=""
    port=$(free_port)
    # As root, the workers run as the same user as ferry (nginx's compiled-in
    # default, nobody, may not read the scratch directory).
    [[ $(id -u) -ne 0 ]] || user="user $(id -un) $(id -gn);"
    cat >"$WORK/nginx.conf" <<EOF
$user
worker_processes $WORKERS;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=10000 inactive=60s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$port;
        location /files/ { alias $FILES/; }
        location / { return 404; }
    }
}
EOF
    nginx -p "$WORK/nginx/" -c "$WORK/nginx.conf" -e "$WORK/nginx.err" >>"$WORK/nginx.log" 2>&1 &
    PID[nginx]=$!
    PORT[nginx]=$port
    wait_http nginx "http://127.0.0.1:$port" "${PID[nginx]}"
}

# The raw ceiling: any connection gets a fixed 200 head and the file by sendfile.
start_raw() {
    cat >"$WORK/raw_server.py" <<'EOF'
import os, socket, sys, threading

path, port_file = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % size

def serve(conn):
    with conn:
        got = b""
        while b"\r\n\r\n" not in got and len(got) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                return
            got += chunk
        conn.sendall(head)
        with open(path, "rb") as f:
            conn.sendfile(f)

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
with open(port_file + ".tmp", "w") as f:
    f.write(str(listener.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
EOF
    local deadline=$((SECONDS + 30))
    python3 "$WORK/raw_server.py" "$FILES/big.bin" "$WORK/raw.port" >>"$WORK/raw.log" 2>&1 &
    PID[raw]=$!
    until [[ -s $WORK/raw.port ]]; do
        kill -0 "${PID[raw]}" 2>/dev/null || { cat "$WORK/raw.log" >&2; die "raw server exited"; }
        ((SECONDS < deadline)) || die "raw server not listening after 30 s"
        sleep 0.05
    done
    PORT[raw]=$(<"$WORK/raw.port")
}

alive() { kill -0 "${PID[$1]}" 2>/dev/null || die "$1 (pid ${PID[$1]}) is gone"; }
url() { echo "http://127.0.0.1:${PORT[$1]}/files/$2"; }

# utime + stime of server $1, in clock ticks: every thread of a ferry process;
# nginx's master plus its workers (its children, found by parent pid).
cpu_ticks() {
    local pids=("${PID[$1]}") p l total=0 f
    [[ $1 != nginx ]] || mapfile -t -O 1 pids < <(ps -o pid= --ppid "${PID[nginx]}")
    for p in "${pids[@]}"; do
        read -r l <"/proc/${p// /}/stat" 2>/dev/null || continue
        l=${l##*) }
        read -ra f <<<"$l"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/${PID[$1]}/status"; }

# --- the files ---------------------------------------------------------------------

note "writing the files ($(numfmt --to=iec-i --suffix=B "$((BIG_BYTES + MEM_BYTES))") and a mix of $MIX_FILES)"
head -c 1024 /dev/urandom >"$FILES/small.bin"
head -c 65536 /dev/urandom >"$FILES/medium.bin"
head -c "$BIG_BYTES" /dev/urandom >"$FILES/big.bin"
head -c "$MEM_BYTES" /dev/urandom >"$FILES/stream.bin"
MIX_TOTAL=0
: >"$WORK/mix.list"
for ((i = 0; i < MIX_FILES; i++)); do
    size=$((1024 << (i % 13))) # 1 KiB .. 4 MiB
    head -c "$size" /dev/urandom >"$FILES/mix/m$i.bin"
    MIX_TOTAL=$((MIX_TOTAL + size))
    echo "/files/mix/m$i.bin" >>"$WORK/mix.list"
done
chmod -R a+rX "$WORK"
{
    echo 'local paths = {'
    sed 's/.*/  "&",/' "$WORK/mix.list"
    echo '}'
    echo 'request = function() return wrk.format("GET", paths[math.random(#paths)]) end'
} >"$WORK/mix.lua"
# Ages the files' mtimes, as for any file served for a while.
touch -d '1 hour ago' "$FILES"/*.bin "$FILES"/mix/*.bin

# --- machine facts -------------------------------------------------------------

COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=""
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    DIRTY=" + uncommitted changes under crates/ (git diff HEAD sha256 $(git -C "$ROOT" diff HEAD -- crates Cargo.toml Cargo.lock | sha256sum | cut -c1-12))"
fi
CPU=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "ferry HTTP benchmark"
echo "  machine    $(nproc) CPUs, ${CPU:-unknown CPU}, kernel $(uname -r), $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "  ferry      $COMMIT$DIRTY, $WORKERS http worker threads, [cache] max_bytes $CACHE_MAX"
[[ -z $FERRY_BEFORE ]] || echo "  before     $FERRY_BEFORE (sha256 $(sha256sum "$FERRY_BEFORE" | cut -c1-12))"
echo "  nginx      $(nginx -v 2>&1 | sed 's/^nginx version: //'), worker_processes $WORKERS"
echo "  wrk        $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }'), -t$THREADS -c$CONNECTIONS, $ROUNDS round(s) of $DURATION (warm-up $WARMUP)"
echo "  curl       $(curl --version | head -1 | awk '{ print $2 }'); large file $BIG_BYTES bytes"
echo "  scratch    $WORK ($(df -P "$WORK" | awk 'NR == 2 { print $1 }'))"
echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg) (start)"
echo

for s in "${SERVERS[@]}"; do
    if [[ $s == nginx ]]; then start_nginx; else start_ferry "$s"; fi
done
start_raw
for s in "${SERVERS[@]}" raw; do
    printf '  %-13s pid %-7s port %s\n' "$s" "${PID[$s]}" "${PORT[$s]}"
done
echo

# Every server sends the right bytes, and the cached files are warm.
note "checking and warming"
cat "$FILES/big.bin" >/dev/null
for s in "${SERVERS[@]}"; do
    for f in small.bin medium.bin; do
        curl -sf -o "$WORK/out/$f" "$(url "$s" "$f")" || die "$s: GET $f failed"
        cmp -s "$WORK/out/$f" "$FILES/$f" || die "$s: $f differs from the file"
    done
done

# --- 1. cached files ---------------------------------------------------------------

# Runs wrk against server $1 for file $2 for $3; output in $WORK/last.out.
# Fails on errors other than none: non-2xx answers or socket errors.
run_wrk() {
    alive "$1"
    timeout 600 wrk -t "$THREADS" -c "$CONNECTIONS" -d "$3" "$(url "$1" "$2")" >"$WORK/last.out" 2>&1 ||
        { cat "$WORK/last.out" >&2; die "wrk against $1 failed"; }
    cat "$WORK/last.out" >>"$WORK/wrk.log"
    if grep -q 'Non-2xx\|Socket errors' "$WORK/last.out"; then
        cat "$WORK/last.out" >&2
        die "wrk against $1: errors"
    fi
    alive "$1"
}
last_rps() { sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$WORK/last.out"; }
last_requests() { sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' "$WORK/last.out"; }

CACHED=(small.bin medium.bin)
declare -A RPS CPUREQ MIBS
n=${#SERVERS[@]}
for ((r = 0; r <= ROUNDS; r++)); do
    for ((v = 0; v < ${#CACHED[@]}; v++)); do
        f=${CACHED[v]}
        for ((i = 0; i < n; i++)); do
            s=${SERVERS[(i + r + v) % n]}
            c0=$(cpu_ticks "$s")
            run_wrk "$s" "$f" "$([[ $r == 0 ]] && echo "$WARMUP" || echo "$DURATION")"
            c1=$(cpu_ticks "$s")
            rps=$(last_rps)
            reqs=$(last_requests)
            [[ -n $rps && -n $reqs && $reqs -gt 0 ]] || { cat "$WORK/last.out" >&2; die "no result from wrk"; }
            if ((r > 0)); then
                RPS[$s,$f,$r]=$rps
                CPUREQ[$s,$f,$r]=$(awk -v t=$((c1 - c0)) -v k="$TICK" -v o="$reqs" 'BEGIN { printf "%.2f", t / k / o * 1e6 }')
            fi
            printf '  %-8s %-11s %-13s %10.0f req/s   server CPU %5.2f s\n' \
                "$([[ $r == 0 ]] && echo warm-up || echo "round $r")" "$f" "$s" "$rps" \
                "$(awk -v t=$((c1 - c0)) -v k="$TICK" 'BEGIN { printf "%.2f", t / k }')"
        done
    done
done

# --- 2. the large file -------------------------------------------------------------

BIGS=("${SERVERS[@]}" raw)
nb=${#BIGS[@]}
for ((r = 0; r <= ROUNDS; r++)); do
    for ((i = 0; i < nb; i++)); do
        s=${BIGS[(i + r) % nb]}
        alive "$s"
        out=$(curl -s -o /dev/null -w '%{http_code} %{size_download} %{speed_download}' "$(url "$s" big.bin)") ||
            die "$s: GET big.bin failed"
        read -r code got speed <<<"$out"
        [[ $code == 200 && $got == "$BIG_BYTES" ]] || die "$s: big.bin gave $code with $got of $BIG_BYTES bytes"
        mibs=$(awk -v b="$speed" 'BEGIN { printf "%.1f", b / 1048576 }')
        ((r == 0)) || MIBS[$s,$r]=$mibs
        printf '  %-8s %-11s %-13s %10s MiB/s\n' "$([[ $r == 0 ]] && echo warm-up || echo "round $r")" big.bin "$s" "$mibs"
    done
done
echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg) (end of the rounds)"
echo

# --- optional profile --------------------------------------------------------------

if [[ -n $PROFILE ]]; then
    mkdir -p "$PROFILE"
    for f in "${CACHED[@]}"; do
        note "profiling ferry, $f"
        perf record -e cpu-clock -g -o "$WORK/perf.data" -p "${PID[ferry]}" >/dev/null 2>&1 &
        PERF_PID=$!
        sleep 0.5
        run_wrk ferry "$f" "$DURATION"
        kill -INT "$PERF_PID"
        wait "$PERF_PID" || true
        PERF_PID=""
        perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio 2>/dev/null >"$PROFILE/ferry-${f%.bin}.txt" || true
        echo "  profile    $PROFILE/ferry-${f%.bin}.txt ($(last_rps) req/s under perf)"
    done
    echo
fi

# --- 3. memory ---------------------------------------------------------------------

for s in "${SERVERS[@]}" raw; do
    stop_pid "${PID[$s]}"
    PID[$s]=""
done

# One memory run on a freshly started ferry: $1 the load (both: downloads and
# the mix; streams: the downloads only; mix: the mix only), $2 the allocator
# setting (default, or mmap: MALLOC_MMAP_THRESHOLD_=131072, which turns off
# glibc's dynamic mmap threshold). Results go to the MEM_* arrays under "$1,$2".
declare -A MEM_IDLE MEM_PEAK MEM_HWM MEM_END MEM_HELD MEM_EVICT MEM_SECS MEM_RPS
memory_run() {
    local load=$1 alloc=$2 key="$1,$2" t0 peak=0 running p i code got rss wrk_pid="" json
    local curl_pids=() env=()
    [[ $alloc == default ]] || env=(MALLOC_MMAP_THRESHOLD_=131072)
    note "memory: $load, allocator $alloc"
    FERRY_ENV=("${env[@]}")
    start_ferry ferry
    FERRY_ENV=()
    MEM_IDLE[$key]=$(status_kib ferry VmRSS)
    if [[ $load != streams ]]; then
        timeout 600 wrk -t "$THREADS" -c "$MEM_CLIENTS" -d "${MEM_WRK_SECS}s" --timeout 60s -s "$WORK/mix.lua" \
            "http://127.0.0.1:${PORT[ferry]}" >"$WORK/mem-wrk.out" 2>&1 &
        wrk_pid=$!
        BG_PIDS+=("$wrk_pid")
    fi
    if [[ $load != mix ]]; then
        for ((i = 0; i < MEM_CLIENTS; i++)); do
            curl -s -o /dev/null -w '%{http_code} %{size_download}\n' "$(url ferry stream.bin)" >"$WORK/out/curl.$i" 2>&1 &
            curl_pids+=($!)
        done
        BG_PIDS+=("${curl_pids[@]}")
    fi
    t0=$SECONDS
    while :; do
        running=0
        for p in $wrk_pid "${curl_pids[@]}"; do
            if kill -0 "$p" 2>/dev/null; then running=1; break; fi
        done
        ((running)) || break
        alive ferry
        rss=$(status_kib ferry VmRSS)
        ((rss <= peak)) || peak=$rss
        ((SECONDS - t0 < 900)) || die "memory test still running after 900 s"
        sleep 0.1
    done
    MEM_SECS[$key]=$((SECONDS - t0))
    MEM_RPS[$key]=-
    if [[ -n $wrk_pid ]]; then
        wait "$wrk_pid" || { cat "$WORK/mem-wrk.out" >&2; die "wrk on the mix failed"; }
        if grep -q 'Non-2xx\|Socket errors' "$WORK/mem-wrk.out"; then
            cat "$WORK/mem-wrk.out" >&2
            die "memory test: wrk errors"
        fi
        MEM_RPS[$key]=$(sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' "$WORK/mem-wrk.out")
    fi
    for ((i = 0; i < ${#curl_pids[@]}; i++)); do
        wait "${curl_pids[i]}" || true
        read -r code got <"$WORK/out/curl.$i" || true
        [[ ${code:-} == 200 && ${got:-} == "$MEM_BYTES" ]] ||
            die "memory test: download $i gave ${code:-nothing} with ${got:-0} bytes"
    done
    BG_PIDS=()
    MEM_PEAK[$key]=$peak
    MEM_HWM[$key]=$(status_kib ferry VmHWM)
    MEM_END[$key]=$(status_kib ferry VmRSS)
    json=$(curl -sf "http://127.0.0.1:${PORT[ferry]}/api/cache") || die "no /api/cache"
    MEM_HELD[$key]=$(json_num "$json" bytes_held)
    MEM_EVICT[$key]=$(json_num "$json" evictions)
    printf '  memory     %-8s %-8s peak VmRSS %6.1f MiB, VmHWM %6.1f MiB, %d s\n' "$load" "$alloc" \
        "$(awk -v k="$peak" 'BEGIN { print k / 1024 }')" "$(awk -v k="${MEM_HWM[$key]}" 'BEGIN { print k / 1024 }')" "${MEM_SECS[$key]}"
    stop_pid "${PID[ferry]}"
    PID[ferry]=""
}
json_num() { echo "$1" | sed -n "s/.*\"$2\": *\\([0-9][0-9]*\\).*/\\1/p" | head -n 1; }

MEM_WRK_SECS=$([[ $QUICK == 1 ]] && echo 5 || echo 20)
if ((QUICK)); then MEM_LOADS=(both); else MEM_LOADS=(both streams mix); fi
MEM_ALLOCS=(default mmap)
for load in "${MEM_LOADS[@]}"; do
    for alloc in "${MEM_ALLOCS[@]}"; do
        memory_run "$load" "$alloc"
    done
done
echo

# --- report ------------------------------------------------------------------------

series() { local -n arr=$1; local r out=""; for ((r = 1; r <= ROUNDS; r++)); do out+="${arr[$2,$r]} "; done; echo "${out% }"; }
# Per-round ratios of array $1: contender $2 over $3, for key suffix $4 ("" or ",file").
per_round() {
    local -n arr=$1
    local r out=""
    for ((r = 1; r <= ROUNDS; r++)); do
        out+=$(awk -v a="${arr[$2$4,$r]}" -v b="${arr[$3$4,$r]}" 'BEGIN { printf "%.2f ", a / b }')
    done
    echo "${out% }"
}

echo "Cached files: wrk -t$THREADS -c$CONNECTIONS -d$DURATION; median of $ROUNDS round(s)"
for f in "${CACHED[@]}"; do
    declare -A MED=()
    for s in "${SERVERS[@]}"; do MED[$s]=$(series RPS "$s,$f" | median); done
    echo
    echo "$f ($(stat -c %s "$FILES/$f") bytes)"
    echo
    echo "| server | median req/s | each round (req/s) | server CPU µs/req (median) | ferry / nginx: of medians | each round | median of rounds | target |"
    echo "|---|---:|---|---:|---:|---|---:|---|"
    for s in "${SERVERS[@]}"; do
        cpu=$(series CPUREQ "$s,$f" | median)
        rounds=$(series RPS "$s,$f" | awk '{ for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? " " : ""), $i }')
        if [[ $s == nginx ]]; then
            printf '| %s | %.0f | %s | %.2f | - | - | - | - |\n' "$s" "${MED[$s]}" "$rounds" "$cpu"
            continue
        fi
        per=$(per_round RPS "$s" nginx ",$f")
        t="-"
        [[ $s != ferry ]] || t=1.0
        awk -v s="$s" -v m="${MED[$s]}" -v rs="$rounds" -v cpu="$cpu" -v base="${MED[nginx]}" \
            -v per="$per" -v pm="$(median <<<"$per")" -v t="$t" '
            BEGIN {
                r = m / base
                v = (t == "-") ? "-" : sprintf("≥ %.1f: %s", t, (r >= t) ? "met" : "NOT met")
                printf "| %s | %.0f | %s | %.2f | %.2f | %s | %.2f | %s |\n", s, m, rs, cpu, r, per, pm, v
            }'
    done
done
echo

echo "Large file: curl -s -o /dev/null -w '%{speed_download}', $BIG_BYTES bytes, page cache warm; median of $ROUNDS round(s)"
echo
echo "| server | median MiB/s | each round (MiB/s) | / nginx: of medians | each round | / raw: of medians | each round | target |"
echo "|---|---:|---|---:|---|---:|---|---|"
declare -A BMED=()
for s in "${BIGS[@]}"; do BMED[$s]=$(series MIBS "$s" | median); done
for s in "${BIGS[@]}"; do
    vn="-" pn="-" vr="-" pr="-" t="-"
    if [[ $s != nginx ]]; then
        vn=$(awk -v a="${BMED[$s]}" -v b="${BMED[nginx]}" 'BEGIN { printf "%.2f", a / b }')
        pn=$(per_round MIBS "$s" nginx "")
    fi
    if [[ $s != raw ]]; then
        vr=$(awk -v a="${BMED[$s]}" -v b="${BMED[raw]}" 'BEGIN { printf "%.2f", a / b }')
        pr=$(per_round MIBS "$s" raw "")
    fi
    [[ $s != ferry ]] || t=$(awk -v r="$vn" 'BEGIN { printf "≥ 0.8: %s", (r >= 0.8) ? "met" : "NOT met" }')
    echo "| $s | ${BMED[$s]} | $(series MIBS "$s") | $vn | $pn | $vr | $pr | $t |"
done
echo

# The streamed pieces' bound (crates/http: HttpLimits::stream_buffer_bytes,
# 64 MiB by default, plus two 64 KiB pieces per connection once it is spent).
STREAM_BOUND=$(((64 << 20) + MEM_CLIENTS * 2 * (64 << 10)))
echo "Memory: a fresh ferry per row; both = $MEM_CLIENTS concurrent downloads of a $MEM_BYTES-byte file (streamed, never cached) + wrk -c$MEM_CLIENTS for ${MEM_WRK_SECS} s on $MIX_FILES files of 1 KiB-4 MiB ($MIX_TOTAL bytes; cache max_bytes $CACHE_MAX); streams, mix = one of the two"
echo "Allocator: default = glibc as it comes; mmap = MALLOC_MMAP_THRESHOLD_=131072 (no dynamic mmap threshold)"
echo
echo "| load | allocator | VmRSS idle (MiB) | peak VmRSS, sampled (MiB) | VmHWM (MiB) | VmRSS after (MiB) | cache held after (MiB) | evictions | mix req/s | s |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for load in "${MEM_LOADS[@]}"; do
    for alloc in "${MEM_ALLOCS[@]}"; do
        k="$load,$alloc"
        awk -v l="$load" -v al="$alloc" -v a="${MEM_IDLE[$k]}" -v p="${MEM_PEAK[$k]}" -v h="${MEM_HWM[$k]}" \
            -v e="${MEM_END[$k]}" -v held="${MEM_HELD[$k]:-0}" -v ev="${MEM_EVICT[$k]:-0}" -v r="${MEM_RPS[$k]}" \
            -v t="${MEM_SECS[$k]}" '
            BEGIN {
                printf "| %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %d | %s | %d |\n", l, al, a / 1024, p / 1024, h / 1024,
                    e / 1024, held / 1048576, ev, r, t
            }'
    done
done
echo
awk -v c="$CACHE_MAX" -v sb="$STREAM_BOUND" -v n="$MEM_CLIENTS" '
    BEGIN {
        printf "Bounds: cache max_bytes %.1f MiB; streamed pieces at most 64 MiB + %d x 2 x 64 KiB = %.1f MiB; together %.1f MiB (plus the idle process)\n",
            c / 1048576, n, sb / 1048576, (c + sb) / 1048576
    }'
