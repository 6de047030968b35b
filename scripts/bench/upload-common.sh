# Shared by the uploader benchmarks (upload-load.sh, swap-lock.sh, queue-throughput.sh):
# a throwaway cluster brought down on exit, psql helpers, timing, and "fake" succeeded
# runs (a run row, a result file with its manifest, and an upload task), so the
# uploader can be measured without a pause/scan cycle. Source it; do not run it.
# shellcheck shell=bash
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PGMAINT=${PGMAINT:-$REPO/target/release/pgmaint}
BENCH_ROOT=${BENCH_ROOT:-$REPO/target/bench}

# bench_cluster NAME: start a cluster in $BENCH_ROOT/NAME; stop and delete it when the
# script exits, whatever happens.
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

# upload_cluster NAME: the cluster, pgmaint's schema, and an uploader config.
upload_cluster() {
    bench_cluster "$1"
    UPLOAD_CONFIG=$CLUSTER_DIR/upload.toml
    config "$UPLOAD_CONFIG" "[uploader]
lease = \"300s\"
lock_timeout = \"10s\"
slots = 1"
    "$PGMAINT" --config "$UPLOAD_CONFIG" init >/dev/null
}

# fake_upload TASK KIND CSV PARAMS_JSON: a succeeded run holding CSV (moved into
# results.dir/<run>/TASK.csv) with a manifest, and its queued upload task. Prints
# the task id.
fake_upload() {
    local task=$1 kind=$2 csv=$3 params=$4 run lsn dir
    read -r run lsn < <(psql_p -AtF' ' -c "INSERT INTO pgmaint.runs
        (replica, state, holder, snapshot_lsn, timeline, system_identifier, finished_at)
        VALUES ('r1', 'succeeded', 'bench', pg_current_wal_lsn(), 1, 1, now()) RETURNING id, snapshot_lsn::text")
    dir=$RESULTS_DIR/$run
    mkdir -p "$dir"
    mv "$csv" "$dir/$task.csv"
    python3 - "$dir" "$task" "$run" "$lsn" <<'PY'
import hashlib, json, os, sys
d, task, run, lsn = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
path = os.path.join(d, task + ".csv")
h, size, lines = hashlib.md5(), 0, 0
with open(path, "rb") as f:
    header = f.readline()
    h.update(header); size += len(header)
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk); size += len(chunk); lines += chunk.count(b"\n")
cols = header.decode().rstrip("\n").split(",")
entry = {"name": task, "kind": "materialize", "status": "completed", "rows_scanned": lines, "findings": 0,
         "file": {"name": task + ".csv", "columns": cols, "rows": lines, "size": size, "md5": h.hexdigest()}}
m = {"run_id": run, "replica": "r1",
     "snapshot": {"lsn": lsn, "timeline": 1, "system_identifier": 1, "postmaster_start": "2026-01-01T00:00:00Z"},
     "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z", "valid": True, "tasks": [entry]}
json.dump(m, open(os.path.join(d, "manifest.json"), "w"), indent=2)
PY
    psql_p -Atc "INSERT INTO pgmaint.upload_tasks (run_id, task_name, apply_kind, file, manifest, params, target)
        VALUES ($run, '$task', '$kind', '$run/$task.csv', '$run/manifest.json', '$params'::jsonb, '$params'::jsonb ->> 'target')
        RETURNING id"
}

# rate ROWS SECONDS: rows per second, rounded.
rate() { echo "$1 / $2" | bc -l | xargs printf '%.0f'; }
