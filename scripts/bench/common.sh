# Shared by every benchmark (via scan-common.sh and upload-common.sh): a throwaway
# cluster brought down on exit, psql helpers, config, timing, result lines.
# Source it; do not run it.
# shellcheck shell=bash
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PGMAINT=${PGMAINT:-$REPO/target/release/pgmaint}
BENCH_ROOT=${BENCH_ROOT:-$REPO/target/bench}

# bench_cluster NAME: start a 1-replica cluster in $BENCH_ROOT/NAME; stop and delete it
# when the script exits, whatever happens.
bench_cluster() {
    CLUSTER_DIR=$BENCH_ROOT/$1
    [[ -x $PGMAINT ]] || { echo "missing $PGMAINT: cargo build --release -p pgmaint" >&2; exit 2; }
    trap 'bash "$REPO/scripts/cluster.sh" down --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true' EXIT
    bash "$REPO/scripts/cluster.sh" down --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true
    bash "$REPO/scripts/cluster.sh" up --replicas 1 --dir "$CLUSTER_DIR" >/dev/null
    # shellcheck disable=SC1091
    set -a; source "$CLUSTER_DIR/cluster.env"; set +a
    CONFIG_BASE=$CLUSTER_DIR/pgmaint.toml
}

psql_p() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d app "$@"; }
psql_r() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$R1_PORT" -U postgres -d app "$@"; }

# config FILE TOML: the cluster's config plus TOML.
config() { { cat "$CONFIG_BASE"; echo; echo "$2"; } >"$1"; }

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }

# result LINE: print and append to $BENCH_OUT (if set).
result() {
    echo "$*"
    if [[ -n ${BENCH_OUT:-} ]]; then echo "$*" >>"$BENCH_OUT"; fi
}
