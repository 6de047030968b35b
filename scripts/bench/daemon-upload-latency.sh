#!/usr/bin/env bash
# Upload latency under `pgmaint daemon`: from a cycle's queue commit to the upload being
# applied by the daemon's own upload worker, woken by LISTEN/NOTIFY. Goal < 1 s.
# Measured from the primary's own timestamps in pgmaint.upload_tasks, for each task:
#   total  finished_at - created_at   (created_at: now() of the queue transaction, so
#                                      at most a few ms before its commit; finished_at:
#                                      clock_timestamp() of the completing UPDATE,
#                                      inside the apply transaction, just before commit)
#   wake   started_at - created_at    (NOTIFY delivered, task claimed)
#   apply  finished_at - started_at   (the findings apply itself)
# The daemon runs one row_checksum task `every = "3s"` over BLOB_ROWS rows of which
# BAD_ROWS have a wrong checksum, so each cycle queues one findings upload; RUNS uploads
# are measured. uploader.poll_interval is POLL (default 1h), so that no upload can be
# picked up by the worker's polling: every sub-second figure is NOTIFY's doing.
# Baseline: the same worker without NOTIFY would find a task only at its next poll,
# i.e. after U(0, poll_interval): median 2.5 s and worst 5 s with the default
# poll_interval of 5s (computed, not measured: NOTIFY cannot be turned off without
# changing the code); and cron's `uploader --once` every minute (README, "Running as a
# service") 30 s and 60 s.
#   RUNS=10   EVERY=3s   POLL=1h   BLOB_ROWS=1000   BAD_ROWS=5
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/daemon-common.sh"
RUNS=${RUNS:-10}
EVERY=${EVERY:-3s}
POLL=${POLL:-1h}
BLOB_ROWS=${BLOB_ROWS:-1000}
BAD_ROWS=${BAD_ROWS:-5}
GOAL=1

bench_cluster daemon-upload-latency
"$PGMAINT" --config "$CONFIG_BASE" init >/dev/null 2>&1
psql_p -c "CREATE TABLE blobs (id bigint PRIMARY KEY, payload bytea, payload_md5 text)" \
    -c "INSERT INTO blobs SELECT g, p, md5(p) FROM (SELECT g, convert_to(repeat(g::text, 50), 'UTF8') AS p FROM generate_series(1, $BLOB_ROWS) g) s" \
    -c "UPDATE blobs SET payload_md5 = md5('corrupt') WHERE id <= $BAD_ROWS" >/dev/null
CONFIG=$CLUSTER_DIR/daemon.toml
config "$CONFIG" "[uploader]
poll_interval = \"$POLL\"

[[tasks]]
name = \"blob-integrity\"
kind = \"row_checksum\"
table = \"public.blobs\"
key = \"id\"
content = \"payload\"
checksum = \"payload_md5\"
every = \"$EVERY\""
start_daemon "$CONFIG" "$CLUSTER_DIR/daemon.log"

# Wait for RUNS finished uploads (or a time-out of 20 s per expected cycle).
deadline=$(($(date +%s) + 60 + RUNS * 20))
done_=0
while :; do
    done_=$(psql_p -Atc "SELECT count(*) FROM pgmaint.upload_tasks WHERE finished_at IS NOT NULL")
    ((done_ >= RUNS)) && break
    if (($(date +%s) > deadline)); then
        echo "only $done_ of $RUNS uploads finished in time; daemon log:" >&2
        tail -20 "$CLUSTER_DIR/daemon.log" >&2
        exit 1
    fi
    kill -0 "$DAEMON_PID" 2>/dev/null || { echo "pgmaint daemon died" >&2; tail -20 "$CLUSTER_DIR/daemon.log" >&2; exit 1; }
    sleep 0.5
done
stop_daemon
warns=$(grep -cE ' (WARN|ERROR) ' "$CLUSTER_DIR/daemon.log" || true)
((warns == 0)) || { echo "the daemon logged $warns warning/error line(s):" >&2; grep -E ' (WARN|ERROR) ' "$CLUSTER_DIR/daemon.log" | head -5 >&2; }

bad=$(psql_p -Atc "SELECT count(*) FROM (SELECT id FROM pgmaint.upload_tasks WHERE finished_at IS NOT NULL ORDER BY id LIMIT $RUNS) t
                   JOIN pgmaint.upload_tasks u USING (id) WHERE u.state <> 'completed'")
[[ $bad == 0 ]] || { echo "$bad of the first $RUNS uploads did not complete:" >&2; psql_p -c "SELECT id, state, last_error FROM pgmaint.upload_tasks ORDER BY id" >&2; exit 1; }
findings=$(psql_p -Atc "SELECT count(*) FROM pgmaint.integrity_findings")

# stats EXPR: min / median / max over the first RUNS completed tasks, in ms.
stats() {
    psql_p -AtF' ' -c "WITH t AS (SELECT $1 AS d FROM pgmaint.upload_tasks WHERE state = 'completed' ORDER BY id LIMIT $RUNS)
        SELECT round(min(d))::int, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY d))::int, round(max(d))::int FROM t"
}
ms() { echo "extract(epoch FROM $1) * 1000"; }
read -r tmin tmed tmax < <(stats "$(ms 'finished_at - created_at')")
read -r wmin wmed wmax < <(stats "$(ms 'started_at - created_at')")
read -r amin amed amax < <(stats "$(ms 'finished_at - started_at')")
per_task=$(psql_p -AtF' ' -c "SELECT string_agg(round(extract(epoch FROM finished_at - created_at) * 1000)::text, ' ' ORDER BY id)
    FROM (SELECT * FROM pgmaint.upload_tasks WHERE state = 'completed' ORDER BY id LIMIT $RUNS) t")
verdict=PASS
((tmax < GOAL * 1000)) || verdict=FAIL
result "daemon upload latency, queue commit -> applied, $RUNS uploads of $BAD_ROWS findings each (task every $EVERY, poll_interval $POLL, $findings findings rows):"
result "  total min/median/max ${tmin}/${tmed}/${tmax} ms [goal max < ${GOAL} s: $verdict]; per upload: $per_task ms"
result "  of which wake (NOTIFY -> claimed) ${wmin}/${wmed}/${wmax} ms, apply ${amin}/${amed}/${amax} ms"
cycles=$(psql_p -AtF' ' -c "SELECT count(*), round(extract(epoch FROM (max(started_at) - min(started_at)) / greatest(count(*) - 1, 1))::numeric, 2)
    FROM pgmaint.runs WHERE state = 'succeeded'")
result "  cycles: ${cycles% *} succeeded, one every ${cycles#* } s on average (start to start)"
result "  baseline, polling alone (poll_interval 5s, computed): median 2500 ms, max 5000 ms; cron uploader --once every minute: 30 s, 60 s"
