# Shared by the scan benchmarks: a throwaway cluster (brought down on exit), psql
# helpers, timing and peak-RSS measurement. Source it; do not run it.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PGMAINT=${PGMAINT:-$REPO/target/release/pgmaint}
BENCH_ROOT=${BENCH_ROOT:-$REPO/target/bench}

# bench_cluster NAME: start a 1-replica cluster in $BENCH_ROOT/NAME and stop it (and
# delete it) when the script exits, whatever happens.
bench_cluster() {
    CLUSTER_DIR=$BENCH_ROOT/$1
    [[ -x $PGMAINT ]] || { echo "missing $PGMAINT: cargo build --release -p pgmaint" >&2; exit 2; }
    trap 'bash "$REPO/scripts/cluster.sh" down --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true' EXIT
    bash "$REPO/scripts/cluster.sh" down --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true
    bash "$REPO/scripts/cluster.sh" up --dir "$CLUSTER_DIR" >/dev/null
    # shellcheck disable=SC1091
    set -a; source "$CLUSTER_DIR/cluster.env"; set +a
    CONFIG_BASE=$CLUSTER_DIR/pgmaint.toml
}

psql_p() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d app "$@"; }
psql_r() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$R1_PORT" -U postgres -d app "$@"; }

# config FILE TASKS_TOML: the cluster's config plus tasks.
config() {
    { cat "$CONFIG_BASE"; echo; echo "$2"; } >"$1"
}

# wait until the replica has replayed everything the primary has written
wait_caught_up() {
    local lsn
    lsn=$(psql_p -Atc "SELECT pg_current_wal_lsn()")
    until [[ $(psql_r -Atc "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn") == t ]]; do sleep 0.2; done
}

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
min() { echo "if ($1 < $2) $1 else $2" | bc -l | xargs printf '%.2f'; }
REPEAT=${REPEAT:-5}
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }

# peak_rss_kb CMD…: run CMD, print its peak RSS in kB on fd 3 (stdout/stderr pass through).
peak_rss_kb() {
    local out
    out=$(mktemp)
    /usr/bin/time -f '%M' -o "$out" "$@"
    tail -1 "$out" >&3
    rm -f "$out"
}

# task_secs JSON NAME: seconds the task took, from `pgmaint run --json`.
task_secs() {
    python3 -c 'import json,sys
s=json.load(open(sys.argv[1]))
names=[t["name"] for t in s["tasks"]]
print("%.2f" % s["task_seconds"][names.index(sys.argv[2])])' "$1" "$2"
}

# result LINE: print and append to $BENCH_OUT (if set).
result() {
    echo "$*"
    [[ -n ${BENCH_OUT:-} ]] && echo "$*" >>"$BENCH_OUT" || true
}
