#!/usr/bin/env bash
# row_checksum over >= 1 GiB of bytea on the paused replica, against the baseline of one
# `SELECT count(*) … WHERE md5(content) <> checksum` on the same replica (goal >= 1.0x).
#   ROWS=16384 (x 64 KiB = 1 GiB)   PARALLELISM=2
source "$(dirname "$0")/scan-common.sh"
ROWS=${ROWS:-16384}
PARALLELISM=${PARALLELISM:-2}
bench_cluster bench-row-checksum

echo "seeding $ROWS rows x 64 KiB of bytea (stored uncompressed) ..." >&2
psql_p <<SQL
CREATE TABLE blobs (id bigint PRIMARY KEY, payload bytea, payload_md5 text);
ALTER TABLE blobs ALTER payload SET STORAGE EXTERNAL;
INSERT INTO blobs SELECT g, p, md5(p)
  FROM (SELECT g, decode(repeat(md5(g::text), 4096), 'hex') AS p FROM generate_series(1, $ROWS) g) s;
VACUUM ANALYZE blobs;
SQL
wait_caught_up
bytes=$(psql_r -Atc "SELECT sum(octet_length(payload)) FROM blobs")
config "$CLUSTER_DIR/bench.toml" "[[tasks]]
name = \"blobs\"
kind = \"row_checksum\"
table = \"blobs\"
key = \"id\"
content = \"payload\"
checksum = \"payload_md5\"
parallelism = $PARALLELISM"
"$PGMAINT" --config "$CLUSTER_DIR/bench.toml" init >/dev/null

query="SELECT count(*) FROM blobs WHERE md5(payload) <> payload_md5"
psql_r -Atc "$query" >/dev/null            # warm the cache: both sides read it hot
baseline() { psql_r -Atc "$query" >/dev/null; }
# Best of $REPEAT, interleaved: the machine may be shared, and noise only slows things.
base=999999 task=999999 wall=999999
for ((i = 0; i < REPEAT; i++)); do
    t0=$(now); baseline; t1=$(now)
    base=$(min "$base" "$(secs "$t0" "$t1")")
    t0=$(now); "$PGMAINT" --config "$CLUSTER_DIR/bench.toml" run --json >"$CLUSTER_DIR/run.json" 2>/dev/null; t1=$(now)
    wall=$(min "$wall" "$(secs "$t0" "$t1")")
    task=$(min "$task" "$(task_secs "$CLUSTER_DIR/run.json" blobs)")
done
result "row_checksum: $((bytes / 1048576)) MiB; single SELECT on the replica ${base}s; pgmaint task ${task}s (whole cycle ${wall}s, parallelism $PARALLELISM); speed ratio $(ratio "$base" "$task")x (cycle $(ratio "$base" "$wall")x), goal >= 1.0x"
