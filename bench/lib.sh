# Helpers shared by the benchmark scripts (sourced, not run). A script sets
# NAME (for its messages) before calling die.

# The comment block at the top of script $1, as its --help.
usage() { sed -n '2,/^set -euo/p' "$1" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "${NAME:-bench}: $*" >&2; exit 1; }
note() { echo "-- $*" >&2; }

need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "needs $tool"
    done
}

# Prints the machine and the ferry commit being measured; $1 is the checkout.
machine_facts() {
    local root=$1 commit dirty="" cpu
    commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo "unknown (not a git checkout)")
    if [[ -n $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        dirty=" + uncommitted changes (git diff HEAD sha256 $(git -C "$root" diff HEAD | sha256sum | cut -c1-12))"
    fi
    cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "  machine    $(nproc) CPUs, ${cpu:-unknown CPU}, kernel $(uname -r)"
    echo "  ferry      $commit$dirty"
    echo "  load avg   $(cut -d' ' -f1-3 /proc/loadavg)"
}

# start_ferry BINARY DATA LOG [serve args...]: starts `ferry serve --data DATA`
# in the background and waits (60 s at most) for DATA/listen.json and
# DATA/ferry.pid.
start_ferry() {
    local bin=$1 data=$2 log=$3 launched deadline=$((SECONDS + 60))
    shift 3
    rm -f "$data/listen.json"
    "$bin" serve --data "$data" "$@" >/dev/null 2>>"$log" &
    launched=$!
    until [[ -s $data/listen.json && -s $data/ferry.pid ]]; do
        kill -0 "$launched" 2>/dev/null || die "ferry serve exited at start (log: $log)"
        ((SECONDS < deadline)) || die "no $data/listen.json after 60 s"
        sleep 0.05
    done
}

# stop_ferry DATA: stops the process DATA/ferry.pid names (it changes at every
# live upgrade), by pid, and waits up to 30 s for it to exit.
stop_ferry() {
    local data=$1 pid deadline=$((SECONDS + 30))
    pid=$(cat "$data/ferry.pid" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || { note "server $pid did not stop within 30 s"; return 1; }
        sleep 0.05
    done
    rm -f "$data/ferry.pid"
}

# listen_addr DATA SERVICE: the address listen.json gives for SERVICE.
listen_addr() {
    sed -n "s/.*\"$2\": *\"\\([^\"]*\\)\".*/\\1/p" "$1/listen.json"
}

# json_field JSON NAME: a top-level number field of a JSON object.
json_field() {
    echo "$1" | sed -n "s/.*\"$2\": *\\([0-9][0-9]*\\).*/\\1/p" | head -n 1
}

# The median of the numbers on standard input (separated by spaces or lines).
median() { tr ' ' '\n' | awk NF | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
