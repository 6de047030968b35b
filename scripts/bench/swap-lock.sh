#!/usr/bin/env bash
# The exclusive-lock window of a swap on a 1M-row target, with readers hitting the
# target throughout; against the baseline of refreshing the table in place
# (BEGIN; TRUNCATE; COPY; COMMIT), measured in the same run. Goal: <= 50 ms.
#   ROWS=1000000   READERS=2
# Reported: the lock window the uploader logs (LOCK TABLE granted -> COMMIT done), and
# the worst latency a reader saw (pgbench per-transaction log) during each refresh.
source "$(dirname "$0")/upload-common.sh"
ROWS=${ROWS:-1000000}
READERS=${READERS:-2}
upload_cluster bench-swap-lock

echo "building a $ROWS-row target with 2 indexes, grants and a comment ..." >&2
psql_p <<SQL
CREATE ROLE reader;
CREATE TABLE citation_counts (doc_id bigint PRIMARY KEY, cites integer NOT NULL, title text);
CREATE INDEX citation_counts_cites ON citation_counts (cites DESC);
COMMENT ON TABLE citation_counts IS 'citations per document';
GRANT SELECT ON citation_counts TO reader;
INSERT INTO citation_counts SELECT g, g % 5000, md5(g::text) FROM generate_series(1, $ROWS) g;
VACUUM ANALYZE citation_counts;
SQL
psql_p -c "\\copy (SELECT g AS doc_id, (g * 7) % 5000 AS cites, md5((g + 1)::text) AS title FROM generate_series(1, $ROWS) g) TO '$work/new.csv' (FORMAT csv, HEADER true)"
cp "$work/new.csv" "$work/baseline.csv"
cat >"$work/reader.sql" <<SQL
\\set id random(1, $ROWS)
SELECT title FROM citation_counts WHERE doc_id = :id;
SQL

# readers TAG SECONDS: pgbench readers in the background, per-transaction log.
readers() {
    (cd "$work" && "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -c "$READERS" -j "$READERS" \
        -T "$2" -f reader.sql -l --log-prefix="$1" app >/dev/null 2>&1) &
    READERS_PID=$!
}
# max_latency_ms TAG: the worst reader latency in the logs.
max_latency_ms() { cat "$work/$1".* | awk 'BEGIN{m=0} {if ($3>m) m=$3} END{printf "%.1f", m/1000}'; }

# Baseline: refresh in place under an exclusive lock for the whole load.
readers readers-base 12
sleep 2
t0=$(now)
psql_p <<SQL
BEGIN;
TRUNCATE citation_counts;
\\copy citation_counts FROM '$work/baseline.csv' (FORMAT csv, HEADER true)
COMMIT;
SQL
t1=$(now)
wait "$READERS_PID"
base_ms=$(echo "($t1 - $t0) * 1000" | bc -l | xargs printf '%.0f')
base_reader=$(max_latency_ms readers-base)

# pgmaint swap.
fake_upload cites swap "$work/new.csv" '{"target": "public.citation_counts"}' >/dev/null
readers readers-swap 20
sleep 2
t0=$(now)
PGMAINT_LOG=${PGMAINT_LOG:-info} "$PGMAINT" --config "$UPLOAD_CONFIG" uploader --once >/dev/null 2>"$work/swap.log"
t1=$(now)
wait "$READERS_PID"
swap_total=$(secs "$t0" "$t1")
cp "$work/swap.log" "$BENCH_ROOT/swap-lock.uploader.log"
lock_ms=$(grep -o 'lock_ms="\?[0-9.]*' "$work/swap.log" | tail -1 | grep -o '[0-9.]*$')
swap_reader=$(max_latency_ms readers-swap)
[[ $(psql_p -Atc "SELECT count(*) FROM citation_counts WHERE title = md5((doc_id + 1)::text)") == "$ROWS" ]] ||
    { echo "the swap did not load the new contents" >&2; cat "$work/swap.log" >&2; exit 1; }
[[ $(psql_p -Atc "SELECT has_table_privilege('reader', 'citation_counts', 'SELECT')
                  AND obj_description('citation_counts'::regclass, 'pg_class') = 'citations per document'
                  AND to_regclass('citation_counts_cites') IS NOT NULL") == t ]] ||
    { echo "grants, comment or index lost in the swap" >&2; exit 1; }

result "swap: baseline TRUNCATE+COPY in place on $ROWS rows: exclusive lock ${base_ms} ms; worst reader wait ${base_reader} ms"
result "swap: pgmaint swap of $ROWS rows (whole apply ${swap_total}s): exclusive lock ${lock_ms} ms; worst reader wait ${swap_reader} ms (goal <= 50 ms)"
