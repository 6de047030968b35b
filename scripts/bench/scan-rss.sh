#!/usr/bin/env bash
# Peak RSS of `pgmaint run` per scan kind at 1x and 5x the data (goal: flat).
# 1x = 128 MiB of bytea rows and 128 MiB of files; 5x = 640 MiB of each.
source "$(dirname "$0")/scan-common.sh"
ROWS_1X=${ROWS_1X:-2048}      # x 64 KiB
FILES_1X=${FILES_1X:-32}      # x 4 MiB
bench_cluster bench-rss
store=$CLUSTER_DIR/store
mkdir -p "$store"

psql_p <<SQL
CREATE TABLE blobs (id bigint PRIMARY KEY, payload bytea, payload_md5 text);
ALTER TABLE blobs ALTER payload SET STORAGE EXTERNAL;
CREATE TABLE store_files (id int PRIMARY KEY, rel_path text NOT NULL, md5 text NOT NULL, bytes bigint NOT NULL);
CREATE TABLE blob_digest (id bigint PRIMARY KEY, h text);
SQL

# grow FROM TO: rows and files numbered FROM+1 .. TO
grow() {
    psql_p -c "INSERT INTO blobs SELECT g, p, md5(p) FROM (SELECT g, decode(repeat(md5(g::text), 4096), 'hex') AS p
                 FROM generate_series($(($1 * ROWS_1X / FILES_1X + 1)), $(($2 * ROWS_1X / FILES_1X))) g) s"
    for ((i = $1 + 1; i <= $2; i++)); do head -c 4194304 /dev/urandom >"$store/f$i.bin"; done
    for ((i = $1 + 1; i <= $2; i++)); do printf '%s\tf%s.bin\t%s\t4194304\n' "$i" "$i" "$(md5sum <"$store/f$i.bin" | cut -d' ' -f1)"; done |
        psql_p -c "\\copy store_files FROM STDIN"
    psql_p -c "VACUUM ANALYZE blobs" -c "VACUUM ANALYZE store_files"
    wait_caught_up
}

config "$CLUSTER_DIR/bench.toml" "[[tasks]]
name = \"rows\"
kind = \"row_checksum\"
table = \"blobs\"
key = \"id\"
content = \"payload\"
checksum = \"payload_md5\"
parallelism = 2
[[tasks]]
name = \"files\"
kind = \"file_checksum\"
table = \"store_files\"
key = \"id\"
path = \"rel_path\"
checksum = \"md5\"
size = \"bytes\"
root = \"$store\"
parallelism = 2
[[tasks]]
name = \"dump\"
kind = \"export\"
tables = [\"blobs\"]
[[tasks]]
name = \"digest\"
kind = \"materialize\"
query = \"SELECT id, md5(payload) AS h, payload FROM blobs\"
target = \"blob_digest\"
[[tasks]]
name = \"storage\"
kind = \"amcheck\"
tables = [\"blobs\"]
heapallindexed = true"
"$PGMAINT" --config "$CLUSTER_DIR/bench.toml" init >/dev/null

declare -A rss
measure() {
    local scale=$1 t kb
    for t in rows files dump digest storage; do
        kb=$( { peak_rss_kb "$PGMAINT" --config "$CLUSTER_DIR/bench.toml" run --task "$t" >/dev/null 2>&1; } 3>&1 )
        rss[$t,$scale]=$kb
    done
    rm -rf "${RESULTS_DIR:?}"/*          # exports of 5x are large
}
grow 0 "$FILES_1X"
measure 1
grow "$FILES_1X" $((5 * FILES_1X))
measure 5
for t in rows files dump digest storage; do
    result "peak RSS $t: 1x $((rss[$t,1] / 1024)) MiB, 5x $((rss[$t,5] / 1024)) MiB (5x/1x $(ratio "${rss[$t,5]}" "${rss[$t,1]}"))"
done
