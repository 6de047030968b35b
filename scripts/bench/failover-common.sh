# Shared by the failover benchmarks (failover.sh, failover-auto.sh): psql against any
# server of the cluster, the first-write loop that ends an outage, and waits on a
# replica's WAL position. Source it after common.sh; do not run it.
# shellcheck shell=bash
set -euo pipefail

# psql_at PORT ARGS…
psql_at() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d app "${@:2}"; }

# first_write PORT [PID]: retry an INSERT until one commits (every 10 ms); prints
# nothing. Gives up if process PID (pgmaint) has exited.
first_write() {
    until psql_at "$1" -c "INSERT INTO failover_probe VALUES (now())" >/dev/null 2>&1; do
        if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then
            psql_at "$1" -c "INSERT INTO failover_probe VALUES (now())" >/dev/null 2>&1 && return 0
            return 1
        fi
        sleep 0.01
    done
}

# first_write_any TIMEOUT PORT…: retry an INSERT against each PORT in turn, every
# 10 ms, until one commits; prints that port. Gives up (status 1) after TIMEOUT seconds.
first_write_any() {
    local limit=$1 port deadline
    shift
    deadline=$(echo "$(date +%s.%N) + $limit" | bc -l)
    while :; do
        for port in "$@"; do
            if psql_at "$port" -c "INSERT INTO failover_probe VALUES (now())" >/dev/null 2>&1; then
                echo "$port"
                return 0
            fi
        done
        (($(echo "$(date +%s.%N) > $deadline" | bc -l))) && return 1
        sleep 0.01
    done
}

# wait_replayed PORT LSN: until the replica on PORT has replayed LSN.
wait_replayed() {
    until [[ $(psql_at "$1" -Atc "SELECT pg_last_wal_replay_lsn() >= '$2'::pg_lsn") == t ]]; do sleep 0.1; done
}

# wait_received PORT LSN: until the replica on PORT has received LSN.
wait_received() {
    until [[ $(psql_at "$1" -Atc "SELECT pg_last_wal_receive_lsn() >= '$2'::pg_lsn") == t ]]; do sleep 0.1; done
}
