#!/usr/bin/env bash
# Peak RSS of `pgmaint run` per scan kind at 1x and 5x the data (goal: flat).
# 1x = 128 MiB of bytea rows and 128 MiB of files; 5x = 640 MiB of each.
source "$(dirname "$0")/scan-common.sh"
ROWS_1X=${ROWS_1X:-2048}      # x 64 KiB
FILES_1X=${FILES_1X:-32}      # x 4 MiB
bench_cluster bench-rss
store=$CLUSTER_DIR/store
mkdir -p "$store"

create_blobs
create_store_files
psql_p -c "CREATE TABLE blob_digest (id bigint PRIMARY KEY, h text)"

# grow FROM TO: rows and files numbered FROM+1 .. TO
grow() {
    insert_blobs "$(($1 * ROWS_1X / FILES_1X + 1))" "$(($2 * ROWS_1X / FILES_1X))"
    for ((i = $1 + 1; i <= $2; i++)); do head -c 4194304 /dev/urandom >"$store/f$i.bin"; done
    for ((i = $1 + 1; i <= $2; i++)); do printf '%s\tf%s.bin\t%s\t4194304\n' "$i" "$i" "$(md5sum <"$store/f$i.bin" | cut -d' ' -f1)"; done |
        load_store_files
    psql_p -c "VACUUM ANALYZE blobs" -c "VACUUM ANALYZE store_files"
    wait_caught_up
}

bench_config "$(row_checksum_task rows 2)
$(file_checksum_task files "$store" 2)
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

declare -A rss
measure() {
    local scale=$1 t kb
    for t in rows files dump digest storage; do
        kb=$( { peak_rss_kb "$PGMAINT" --config "$BENCH_CONFIG" run --task "$t" >/dev/null 2>&1; } 3>&1 )
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
