#!/usr/bin/env bash
# row_checksum against the single query a DBA would run on the same paused replica,
# PostgreSQL's parallel query at its defaults:
#   SELECT id, payload_md5, md5(payload) FROM blobs WHERE md5(payload) IS DISTINCT FROM payload_md5
# (goal >= 1.2x), with identical findings (the keys pgmaint reports are the keys that
# query returns, planted: 20 mismatches, 1 NULL checksum, 1 NULL content). Also printed,
# for honesty: the ratio against `SELECT count(*) … WHERE md5(payload) <> payload_md5`,
# which PostgreSQL does run with parallel workers (it returns no findings), and the peak
# RSS of `pgmaint run` over 1/5 of the rows and over all of them (goal: flat, < 1.2x).
#   ROW_BYTES=65536 ROWS=16384 (1 GiB; the issue's shapes: 64 B x 2M, 1 KiB x 1M,
#   64 KiB x 16k)   PARALLELISM=2 (the cores)   REPEAT=5
source "$(dirname "$0")/scan-common.sh"
ROW_BYTES=${ROW_BYTES:-65536}
ROWS=${ROWS:-16384}
PARALLELISM=${PARALLELISM:-2}
bench_cluster "bench-row-checksum-$ROW_BYTES"

echo "seeding $ROWS rows x $ROW_BYTES B of bytea (stored uncompressed) ..." >&2
create_blobs
step=500000
for ((from = 1; from <= ROWS; from += step)); do
    to=$((from + step - 1)); ((to > ROWS)) && to=$ROWS
    insert_blobs "$from" "$to" "$ROW_BYTES"
done
psql_p -c "UPDATE blobs SET payload_md5 = md5('tampered') WHERE id % ($ROWS / 20) = 7" \
    -c "UPDATE blobs SET payload_md5 = NULL WHERE id = 3" \
    -c "UPDATE blobs SET payload = NULL WHERE id = 5" \
    -c "CREATE TABLE blobs_fifth AS SELECT * FROM blobs WHERE id <= $ROWS / 5" \
    -c "ALTER TABLE blobs_fifth ADD PRIMARY KEY (id)" \
    -c "VACUUM ANALYZE blobs" -c "VACUUM ANALYZE blobs_fifth"
wait_caught_up
mib=$(psql_r -Atc "SELECT pg_table_size('blobs') / 1048576")
bench_config "$(row_checksum_task blobs "$PARALLELISM")"

query="SELECT id, payload_md5, md5(payload) FROM blobs WHERE md5(payload) IS DISTINCT FROM payload_md5"
counted="SELECT count(*) FROM blobs WHERE md5(payload) <> payload_md5"
plan=$(psql_r -Atc "EXPLAIN $query" | grep -c Gather || true)
psql_r -Atc "$query" >/dev/null            # warm the cache: both sides read it hot
baseline() { psql_r -At -F, -c "$query" >"$CLUSTER_DIR/baseline.out"; }
best_of blobs

# Identical findings: the keys the single query returns are the keys pgmaint reports.
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$CLUSTER_DIR/run.json")
want=$(cut -d, -f1 "$CLUSTER_DIR/baseline.out" | sort -n | tr '\n' ' ')
got=$(python3 -c 'import csv,sys; print(" ".join(sorted((r["row_key"] for r in csv.DictReader(open(sys.argv[1]))), key=int)))' \
    "$RESULTS_DIR/$id/blobs.csv")
[[ "$want" == "$got " ]] || { echo "findings differ: single query [$want], pgmaint [$got]" >&2; exit 1; }
nfind=$(wc -l <"$CLUSTER_DIR/baseline.out")

# The stronger baseline: a count, which PostgreSQL runs with its parallel workers.
par=999999
for ((i = 0; i < REPEAT; i++)); do
    t0=$(now); psql_r -Atc "$counted" >/dev/null; t1=$(now)
    par=$(min "$par" "$(secs "$t0" "$t1")")
done

bench_config "$(row_checksum_task blobs "$PARALLELISM")
$(row_checksum_task fifth "$PARALLELISM" blobs_fifth)"
rss_ratio fifth blobs
gather=$([[ $plan -gt 0 ]] && echo "parallel plan" || echo "serial plan: PostgreSQL chose no workers")
result "row_checksum $ROW_BYTES B x $ROWS rows ($mib MiB): single findings query ${base}s ($gather); pgmaint task ${task}s (whole cycle ${wall}s, parallelism $PARALLELISM); speed ratio $(ratio "$base" "$task")x (cycle $(ratio "$base" "$wall")x), goal >= 1.2x; findings identical ($nfind); vs parallel count(*) ${par}s: $(ratio "$par" "$task")x; peak RSS 1/5 ${rss_small} MiB, all ${rss_big} MiB (${rss_x}x)"
