#!/usr/bin/env bash
# Queue throughput: no-op upload tasks claimed and completed by 4 concurrent workers,
# in tasks/s, using the uploader's own SQL (uploader/src/queue.rs: claim with
# FOR UPDATE SKIP LOCKED and the prerequisite check, then completion with the fencing
# check inside a transaction; lock_timeout set per session), driven by pgbench with prepared
# statements, as the worker prepares them once per connection.
#   TASKS=40000   WORKERS=4
# Baseline in the same run: `SELECT 1` round trips by the same 4 clients (the ceiling
# of this machine for a 2-statement task is about half of it). Anchors from their
# authors, on other hardware: River ~46k jobs/s (8 cores), graphile-worker ~15.6k/s
# unbatched.
source "$(dirname "$0")/upload-common.sh"
TASKS=${TASKS:-40000}
WORKERS=${WORKERS:-4}
upload_cluster bench-queue
per=$((TASKS / WORKERS))
TASKS=$((per * WORKERS))

psql_p <<SQL
INSERT INTO pgmaint.runs (replica, state, holder, snapshot_lsn, finished_at)
VALUES ('r1', 'succeeded', 'bench', pg_current_wal_lsn(), now());
INSERT INTO pgmaint.upload_tasks (run_id, task_name, apply_kind, file, manifest)
SELECT (SELECT max(id) FROM pgmaint.runs), 'noop-' || g, 'findings', 'x', 'x' FROM generate_series(1, $TASKS) g;
VACUUM ANALYZE pgmaint.upload_tasks;
SQL

cat >"$work/task.sql" <<'SQL'
UPDATE pgmaint.upload_tasks t
   SET state = 'running', attempts = t.attempts + 1, worker = 'bench/' || :client_id,
       started_at = now(), heartbeat_at = now(), lease_expires_at = now() + 60000 * interval '1 millisecond'
 WHERE t.id = (SELECT w.id FROM pgmaint.upload_tasks w
                WHERE w.state = 'waiting' AND w.not_before <= now()
                  AND NOT EXISTS (SELECT 1 FROM pgmaint.upload_tasks d
                                   WHERE d.id = ANY (w.depends_on) AND d.state <> 'completed')
                ORDER BY w.not_before, w.id
                FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING t.id AS id, t.attempts AS attempt \gset
BEGIN;
UPDATE pgmaint.upload_tasks
   SET state = 'completed', finished_at = clock_timestamp(), rows_applied = 0, lease_expires_at = NULL, last_error = NULL
 WHERE id = :id AND worker = 'bench/' || :client_id AND attempts = :attempt AND state = 'running'
   AND lease_expires_at > clock_timestamp() AND NOT cancel_requested;
COMMIT;
SQL
echo 'SELECT 1;' >"$work/select1.sql"

pgb() { PGOPTIONS="-c lock_timeout=5000" "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -c "$WORKERS" -j "$WORKERS" "$@" app 2>&1; }
base=$(pgb -M prepared -T 5 -f "$work/select1.sql" | awk '/^tps/ {printf "%.0f", $3}')
t0=$(now)
out=$(pgb -M prepared -t "$per" -f "$work/task.sql")
t1=$(now)
done_n=$(psql_p -Atc "SELECT count(*) FROM pgmaint.upload_tasks WHERE state = 'completed'")
[[ $done_n == "$TASKS" ]] || { echo "only $done_n of $TASKS tasks completed:" >&2; echo "$out" >&2; exit 1; }
dupes=$(psql_p -Atc "SELECT count(*) FROM pgmaint.upload_tasks WHERE attempts <> 1")
[[ $dupes == 0 ]] || { echo "$dupes tasks were claimed more than once" >&2; exit 1; }
tps=$(rate "$TASKS" "$(secs "$t0" "$t1")")
result "queue: baseline SELECT 1 by $WORKERS clients: $base round trips/s"
result "queue: $TASKS no-op tasks claimed+completed by $WORKERS workers: $tps tasks/s ($(ratio "$tps" "$base")x the SELECT 1 rate; each task is 4 round trips: claim, BEGIN, complete, COMMIT); anchors River ~46k/s (8 cores), graphile-worker ~15.6k/s"

# The real worker: REAL_TASKS findings tasks with empty findings files (one per run),
# applied by `pgmaint uploader --once --slots WORKERS`: claim, run and manifest checks,
# MD5 while COPYing, insert, fenced completion, commit; one transaction per task.
REAL_TASKS=${REAL_TASKS:-2000}
first=$(psql_p -Atc "WITH ins AS (INSERT INTO pgmaint.runs (replica, state, holder, snapshot_lsn, timeline, system_identifier, finished_at)
    SELECT 'r1', 'succeeded', 'bench', pg_current_wal_lsn(), 1, 1, now() FROM generate_series(1, $REAL_TASKS)
    RETURNING id) SELECT min(id) FROM ins")
lsn=$(psql_p -Atc "SELECT snapshot_lsn::text FROM pgmaint.runs WHERE id = $first")
python3 - "$RESULTS_DIR" "$first" "$REAL_TASKS" "$lsn" >"$work/real.sql" <<'PY'
import hashlib, json, os, sys
root, first, n, lsn = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
body = b"relation,row_key,finding,detail\n"
for run in range(first, first + n):
    d = os.path.join(root, str(run))
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "f.csv"), "wb").write(body)
    entry = {"name": "f", "kind": "row_checksum", "status": "completed", "rows_scanned": 0, "findings": 0,
             "file": {"name": "f.csv", "columns": ["relation", "row_key", "finding", "detail"], "rows": 0,
                      "size": len(body), "md5": hashlib.md5(body).hexdigest()}}
    m = {"run_id": run, "replica": "r1",
         "snapshot": {"lsn": lsn, "timeline": 1, "system_identifier": 1, "postmaster_start": "2026-01-01T00:00:00Z"},
         "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z", "valid": True, "tasks": [entry]}
    json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
print("INSERT INTO pgmaint.upload_tasks (run_id, task_name, apply_kind, file, manifest)")
print("SELECT r, 'f', 'findings', r || '/f.csv', r || '/manifest.json' FROM generate_series(%d, %d) r;" % (first, first + n - 1))
PY
psql_p -f "$work/real.sql" >/dev/null
psql_p -c "UPDATE pgmaint.runs SET snapshot_lsn = '$lsn'::pg_lsn WHERE id >= $first" >/dev/null
t0=$(now)
"$PGMAINT" --config "$UPLOAD_CONFIG" uploader --once --slots "$WORKERS" >"$work/real.out" 2>"$work/real.log"
t1=$(now)
grep -q "^uploader: $REAL_TASKS task(s) applied" "$work/real.out" || { cat "$work/real.out" "$work/real.log" >&2; exit 1; }
real=$(rate "$REAL_TASKS" "$(secs "$t0" "$t1")")
result "queue: pgmaint uploader --once --slots $WORKERS, $REAL_TASKS findings tasks with empty files (each: checks, COPY, insert, fenced completion, commit): $real tasks/s"
