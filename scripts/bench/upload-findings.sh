#!/usr/bin/env bash
# The findings upload at scale (issue 13): a wrong checksum column flags every row of
# a table, and `pgmaint uploader --once` applies 100k and then 1M `row_checksum`
# findings (COPY into the session's load table, then one INSERT … SELECT joined to the
# checked table, which re-checks each finding as it is inserted, in the transaction
# that completes the task), while pgbench writers update and insert rows of that
# checked table.
#   SIZES="100000 1000000"   findings per upload (the checked table holds the largest)
#   WRITERS=2                pgbench clients writing the checked table during each upload
#   BASELINE_PGMAINT=FILE    a pgmaint built from the code before this change (commit
#                            44a64f3: INSERT … RETURNING every row, then re-check UPDATEs
#                            of 10k rows): also timed on the same uploads, those of at
#                            most BASELINE_MAX findings (default 100000; the old uploader
#                            took minutes for 1M)
# Baseline measured in every run: the same file COPYed and inserted by psql in one
# transaction (COPY into a temporary table, INSERT … SELECT … ON CONFLICT DO NOTHING,
# no re-check): the old uploader's insert step alone, without its RETURNING.
# Every step runs with the same pgbench writers on the checked table (they share the
# 2 cores). Reported per size: wall time and peak RSS (/usr/bin/time -v) of the
# uploader and its ratio to each baseline; for each step, the writers' transactions
# that started during it, failures, worst latency, and lock waits over 1 s on the
# primary (log_lock_waits with deadlock_timeout = 1s: "still waiting" lines in its log).
# Goals: 1M findings in < 30 s with a peak RSS < 64 MB; every pgbench transaction
# completes, none waits over 1 s on a lock.
source "$(dirname "$0")/upload-common.sh"
SIZES=${SIZES:-100000 1000000}
WRITERS=${WRITERS:-2}
BASELINE_MAX=${BASELINE_MAX:-100000}
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (GNU time) for the peak RSS" >&2; exit 2; }
upload_cluster bench-upload-findings
PRIMARY_LOG=$DATA/primary.log

psql_p -q <<'SQL'
ALTER SYSTEM SET log_lock_waits = on;
ALTER SYSTEM SET deadlock_timeout = '1s';
SELECT pg_reload_conf();
SQL
max=0
for n in $SIZES; do if ((n > max)); then max=$n; fi; done
echo "building the checked table: $max rows, every stored checksum wrong ..." >&2
psql_p <<SQL
CREATE TABLE blobs (id bigint PRIMARY KEY, payload bytea, payload_md5 text);
INSERT INTO blobs
SELECT g, convert_to(repeat(md5(g::text), 4), 'UTF8'), md5('wrong' || g) FROM generate_series(1, $max) g;
VACUUM ANALYZE blobs;
SQL
# Writers: update a random row (its checksum stays wrong: every finding still holds)
# and insert a new one.
cat >"$work/writer.sql" <<SQL
\\set id random(1, $max)
\\set new random($((max + 1)), 2000000000)
UPDATE blobs SET payload_md5 = md5('rewritten' || :id) WHERE id = :id;
INSERT INTO blobs VALUES (:new, convert_to('new', 'UTF8'), md5('x')) ON CONFLICT (id) DO NOTHING;
SQL
PARAMS='{"check": "row_checksum", "relation": "public.blobs", "schema": "public", "table": "blobs", "key": "id", "content": "payload", "checksum": "payload_md5"}'

# findings_csv N FILE: the findings a row_checksum scan writes for the first N rows.
findings_csv() {
    psql_p -c "\\copy (SELECT 'public.blobs' AS relation, id::text AS row_key, 'mismatch' AS finding,
        'stored=' || payload_md5 || ' computed=' || md5(payload) AS detail FROM blobs WHERE id <= $1 ORDER BY id)
        TO '$2' (FORMAT csv, HEADER true, FORCE_QUOTE *)"
}
# fresh: no findings recorded, a checkpoint, so that each upload starts alike.
fresh() { psql_p -q -c "TRUNCATE pgmaint.integrity_findings" -c "CHECKPOINT"; }
# prepare N TAG: a fake run of N findings queued, none recorded yet, a checkpoint.
prepare() {
    findings_csv "$1" "$work/$2.csv"
    fake_upload flood findings "$work/$2.csv" "$PARAMS" >/dev/null
    fresh
}
# apply BIN N TAG: `BIN uploader --once` under /usr/bin/time; sets up_secs and
# up_rss_mb (peak RSS), and checks that N findings were recorded.
apply() {
    local bin=$1 n=$2 tag=$3 t0 t1 got
    t0=$(now)
    PGMAINT_LOG=info /usr/bin/time -v -o "$work/$tag.time" "$bin" --config "$UPLOAD_CONFIG" uploader --once \
        >"$work/$tag.out" 2>"$work/$tag.log" || { cat "$work/$tag.log" >&2; exit 1; }
    t1=$(now)
    up_secs=$(secs "$t0" "$t1")
    up_rss_mb=$(awk -F: '/Maximum resident set size/ {printf "%.1f", $2 / 1024}' "$work/$tag.time")
    got=$(psql_p -Atc "SELECT count(*) FROM pgmaint.integrity_findings")
    [[ $got == "$n" ]] || { echo "$tag: $got findings recorded, expected $n" >&2; cat "$work/$tag.log" >&2; exit 1; }
}


# writers_start TAG: pgbench writers on the checked table, in the background, with a
# per-transaction log; then 1 s for them to get going. The lock waits logged on the
# primary are counted from now.
writers_start() {
    log_from=$(stat -c %s "$PRIMARY_LOG")
    rm -f "$work/$1".*
    (cd "$work" && exec "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -c "$WRITERS" -j "$WRITERS" \
        -T 3600 -f writer.sql -l --log-prefix="$1" app >/dev/null 2>"$work/$1.err") &
    writers_pid=$!
    sleep 1
    a0=$(now)
}
# writers_stop TAG: 1 s after the measured step, stop the writers; sets writers_said
# (their transactions that started during the step, failures, worst latency, lock
# waits over 1 s on the primary).
writers_stop() {
    local a1 tx failed worst aborted waits
    a1=$(now)
    sleep 1
    # pgbench writes its per-transaction log as it goes; what SIGINT loses of its
    # buffered tail comes after the step.
    kill -INT "$writers_pid" 2>/dev/null || true
    wait "$writers_pid" 2>/dev/null || true
    read -r tx failed worst < <(cat "$work/$1".[0-9]* | awk -v a0="$a0" -v a1="$a1" '
        { t = $5 + $6 / 1e6 - $3 / 1e6 }   # when the transaction started
        t >= a0 && t <= a1 { n++; if ($3 !~ /^[0-9]+$/) f++; else if ($3 > m) m = $3 }
        END { printf "%d %d %.1f\n", n, f, m / 1000 }')
    aborted=$(grep -c "aborted\|ERROR" "$work/$1.err" || true)
    waits=$(tail -c +"$((log_from + 1))" "$PRIMARY_LOG" | grep -c "still waiting" || true)
    writers_said="writers: $tx transactions, $failed failed, $aborted client errors, worst latency ${worst} ms; lock waits over 1 s: $waits"
}

# The run the baseline's findings belong to.
base_run=$(psql_p -Atc "INSERT INTO pgmaint.runs (replica, state, holder, snapshot_lsn, timeline, system_identifier, finished_at)
    VALUES ('r1', 'succeeded', 'bench', pg_current_wal_lsn(), 1, 1, now()) RETURNING id")
# Every step runs with the writers on the checked table.
for n in $SIZES; do
    # Baseline: psql, the insert alone.
    findings_csv "$n" "$work/base.csv"
    fresh
    writers_start "base-$n"
    t0=$(now)
    psql_p -q <<SQL
BEGIN;
CREATE TEMP TABLE load (relation text, row_key text, finding text, detail text);
\\copy load FROM '$work/base.csv' (FORMAT csv, HEADER true)
INSERT INTO pgmaint.integrity_findings (run_id, task_name, snapshot_lsn, relation, row_key, finding, detail)
SELECT $base_run, 'base', '0/0', relation, row_key, finding, detail FROM load
ON CONFLICT (run_id, task_name, relation, (row_key IS NULL), coalesce(row_key, ''), finding) DO NOTHING;
COMMIT;
SQL
    t1=$(now)
    writers_stop "base-$n"
    base_secs=$(secs "$t0" "$t1")
    result "findings $n: baseline psql COPY + INSERT, no re-check: ${base_secs}s ($writers_said)"

    old_secs=""
    if [[ -n ${BASELINE_PGMAINT:-} ]] && ((n <= BASELINE_MAX)); then
        prepare "$n" "old-$n"
        writers_start "old-$n"
        apply "$BASELINE_PGMAINT" "$n" "old-$n"
        writers_stop "old-$n"
        old_secs=$up_secs
        result "findings $n: the uploader before this change (44a64f3): ${old_secs}s, peak RSS ${up_rss_mb} MB ($writers_said)"
    fi

    prepare "$n" "new-$n"
    writers_start "new-$n"
    apply "$PGMAINT" "$n" "new-$n"
    writers_stop "new-$n"
    tally=$(grep -o 'confirmed=[0-9]* resolved=[0-9]* unknown=[0-9]*' "$work/new-$n.log" | tail -1)
    cp "$work/new-$n.log" "$BENCH_ROOT/upload-findings-$n.uploader.log"
    vs_old=""
    [[ -z $old_secs ]] || vs_old=", $(ratio "$old_secs" "$up_secs")x faster than the uploader before"
    result "findings $n: pgmaint uploader --once (COPY + INSERT re-checked by join + completion): ${up_secs}s, peak RSS ${up_rss_mb} MB; $(ratio "$up_secs" "$base_secs")x the psql insert's time${vs_old} ($tally; $writers_said)"
done
