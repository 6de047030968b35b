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
psql_p -c "CREATE TABLE store_files (id int PRIMARY KEY, rel_path text NOT NULL, md5 text NOT NULL, bytes bigint NOT NULL)"
(cd "$store" && find . -type f -name '*.bin' | sort | xargs md5sum) |
    awk '{ sub(/^\.\//, "", $2); print NR "\t" $2 "\t" $1 "\t4194304" }' |
    psql_p -c "\\copy store_files FROM STDIN"
wait_caught_up
config "$CLUSTER_DIR/bench.toml" "[[tasks]]
name = \"files\"
kind = \"file_checksum\"
table = \"store_files\"
key = \"id\"
path = \"rel_path\"
checksum = \"md5\"
size = \"bytes\"
root = \"$store\"
parallelism = $PARALLELISM"
"$PGMAINT" --config "$CLUSTER_DIR/bench.toml" init >/dev/null

md5sum_2() { (cd "$store" && find . -type f -name '*.bin' -print0 | xargs -0 -P 2 -n $(((FILES + 1) / 2)) md5sum >/dev/null); }
md5sum_2                                     # warm
baseline() { md5sum_2; }
# Best of $REPEAT, interleaved: the machine may be shared, and noise only slows things.
base=999999 task=999999 wall=999999
for ((i = 0; i < REPEAT; i++)); do
    t0=$(now); baseline; t1=$(now)
    base=$(min "$base" "$(secs "$t0" "$t1")")
    t0=$(now); "$PGMAINT" --config "$CLUSTER_DIR/bench.toml" run --json >"$CLUSTER_DIR/run.json" 2>/dev/null; t1=$(now)
    wall=$(min "$wall" "$(secs "$t0" "$t1")")
    task=$(min "$task" "$(task_secs "$CLUSTER_DIR/run.json" files)")
done
findings=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tasks"][0]["findings"])' "$CLUSTER_DIR/run.json")
[[ $findings == 0 ]] || { echo "unexpected findings: $findings" >&2; exit 1; }
result "file_checksum: $((FILES * 4)) MiB in $FILES files; md5sum x2 ${base}s; pgmaint task ${task}s (whole cycle ${wall}s, parallelism $PARALLELISM); speed ratio $(ratio "$base" "$task")x (cycle $(ratio "$base" "$wall")x), goal >= 0.9x"
