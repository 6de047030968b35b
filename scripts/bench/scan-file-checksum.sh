#!/usr/bin/env bash
# file_checksum over >= 1 GiB of files, against `md5sum` in 2 parallel processes over
# the same files (goal >= 0.9x). Both read from the page cache (warmed first).
#   FILES=256 (x 4 MiB = 1 GiB)   PARALLELISM=2
source "$(dirname "$0")/scan-common.sh"
FILES=${FILES:-256}
PARALLELISM=${PARALLELISM:-2}
bench_cluster bench-file-checksum

store=$CLUSTER_DIR/store
echo "writing $FILES files x 4 MiB ..." >&2
mkdir -p "$store"
for ((i = 0; i < FILES; i++)); do
    d=$store/d$((i % 16)); mkdir -p "$d"
    head -c 4194304 /dev/urandom >"$d/f$i.bin"
done
create_store_files
(cd "$store" && find . -type f -name '*.bin' | sort | xargs md5sum) |
    awk '{ sub(/^\.\//, "", $2); print NR "\t" $2 "\t" $1 "\t4194304" }' |
    load_store_files
wait_caught_up
bench_config "$(file_checksum_task files "$store" "$PARALLELISM")"

md5sum_2() { (cd "$store" && find . -type f -name '*.bin' -print0 | xargs -0 -P 2 -n $(((FILES + 1) / 2)) md5sum >/dev/null); }
md5sum_2                                     # warm
baseline() { md5sum_2; }
best_of files
findings=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tasks"][0]["findings"])' "$CLUSTER_DIR/run.json")
[[ $findings == 0 ]] || { echo "unexpected findings: $findings" >&2; exit 1; }
result "file_checksum: $((FILES * 4)) MiB in $FILES files; md5sum x2 ${base}s; pgmaint task ${task}s (whole cycle ${wall}s, parallelism $PARALLELISM); speed ratio $(ratio "$base" "$task")x (cycle $(ratio "$base" "$wall")x), goal >= 0.9x"
