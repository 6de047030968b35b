# Shared by the uploader benchmarks (upload-load.sh, swap-lock.sh, queue-throughput.sh):
# a throwaway cluster brought down on exit, psql helpers, timing, and "fake" succeeded
# runs (a run row, a result file with its manifest, and an upload task), so the
# uploader can be measured without a pause/scan cycle. Source it; do not run it.
# shellcheck shell=bash
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# upload_cluster NAME: the cluster, pgmaint's schema, an uploader config
# (UPLOAD_CONFIG), and an empty scratch directory ($work).
upload_cluster() {
    bench_cluster "$1"
    work=$CLUSTER_DIR/work
    mkdir -p "$work"
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
