#!/usr/bin/env bash
# row_checksum over >= 1 GiB of bytea on the paused replica, against the baseline of one
# `SELECT count(*) … WHERE md5(content) <> checksum` on the same replica (goal >= 1.0x).
#   ROWS=16384 (x 64 KiB = 1 GiB)   PARALLELISM=2
source "$(dirname "$0")/scan-common.sh"
ROWS=${ROWS:-16384}
PARALLELISM=${PARALLELISM:-2}
bench_cluster bench-row-checksum

echo "seeding $ROWS rows x 64 KiB of bytea (stored uncompressed) ..." >&2
seed_blobs "$ROWS"
wait_caught_up
bytes=$(psql_r -Atc "SELECT sum(octet_length(payload)) FROM blobs")
bench_config "$(row_checksum_task blobs "$PARALLELISM")"

query="SELECT count(*) FROM blobs WHERE md5(payload) <> payload_md5"
psql_r -Atc "$query" >/dev/null            # warm the cache: both sides read it hot
baseline() { psql_r -Atc "$query" >/dev/null; }
best_of blobs
result "row_checksum: $((bytes / 1048576)) MiB; single SELECT on the replica ${base}s; pgmaint task ${task}s (whole cycle ${wall}s, parallelism $PARALLELISM); speed ratio $(ratio "$base" "$task")x (cycle $(ratio "$base" "$wall")x), goal >= 1.0x"
