# Shared by the daemon benchmarks (daemon-idle.sh, daemon-upload-latency.sh): start
# `pgmaint daemon` in the background (stopped by SIGTERM on exit, before the cluster is
# brought down), wait for it, and read /proc. Source it after common.sh; do not run it.
# shellcheck shell=bash
set -euo pipefail

DAEMON_PID=
# start_daemon CONFIG LOG: `pgmaint daemon` in the background (DAEMON_PID); stopped on
# exit (SIGTERM, then SIGKILL after 60 s), then the cluster brought down.
start_daemon() {
    "$PGMAINT" --config "$1" daemon 2>"$2" &
    DAEMON_PID=$!
    trap 'stop_daemon; bash "$REPO/scripts/cluster.sh" down --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true' EXIT
    local i
    for i in $(seq 1 100); do
        grep -q 'daemon started' "$2" 2>/dev/null && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$2" >&2; echo "pgmaint daemon exited at start" >&2; exit 1; }
        sleep 0.1
    done
    cat "$2" >&2
    echo "pgmaint daemon did not log 'daemon started' within 10 s" >&2
    exit 1
}

# stop_daemon: SIGTERM the daemon and wait for it (SIGKILL after 60 s).
stop_daemon() {
    [[ -n $DAEMON_PID ]] || return 0
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        local i
        for i in $(seq 1 600); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
}

# cpu_ticks PID: utime + stime of PID, in clock ticks (all its threads).
cpu_ticks() {
    # Fields after the command name, which is in parentheses and may hold spaces.
    local rest
    rest=$(sed 's/^.*) //' "/proc/$1/stat")
    # shellcheck disable=SC2086
    set -- $rest
    # utime and stime are fields 14 and 15 of stat, i.e. 12 and 13 after the name.
    echo $((${12} + ${13}))
}

# status_kb PID FIELD: a kB field of /proc/PID/status (VmRSS, VmHWM).
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

CLK_TCK=$(getconf CLK_TCK)
# cpu_pct TICKS SECONDS: % of one core.
cpu_pct() { echo "100 * $1 / $CLK_TCK / $2" | bc -l | xargs printf '%.3f'; }
mb() { echo "$1 / 1024" | bc -l | xargs printf '%.1f'; }
