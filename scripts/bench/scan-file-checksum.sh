#!/usr/bin/env bash
# file_checksum against md5sum in 2 parallel processes over the same files, both from a
# warm page cache:
#   find ROOT -type f -print0 | xargs -0 -P 2 -n N md5sum > /dev/null
# with N = 500 (the issue's baseline), or half the files when there are fewer than 1000
# (so that both processes work). Goal >= 1.0x for many small files (>= 0.9x for a few
# large ones). Also the peak RSS of `pgmaint run` over 1/5 of the files and over all
# of them (goal: flat, < 1.2x).
#   FILES=256 FILE_BYTES=4194304 (1 GiB; the issue's shapes: 200000 x 4096, 256 x 4 MiB)
#   PARALLELISM=2   REPEAT=5
source "$(dirname "$0")/scan-common.sh"
FILES=${FILES:-256}
FILE_BYTES=${FILE_BYTES:-4194304}
PARALLELISM=${PARALLELISM:-2}
bench_cluster "bench-file-checksum-$FILE_BYTES"

store=$CLUSTER_DIR/store
echo "writing $FILES files x $FILE_BYTES B ..." >&2
mkdir -p "$store"
create_store_files
# Files in 256 directories, each listed with its md5 and size (tab-separated).
python3 - "$store" "$FILES" "$FILE_BYTES" <<'PY' | load_store_files
import hashlib, os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = sys.stdout
for i in range(1, n + 1):
    rel = "d%03d/f%d.bin" % (i % 256, i)
    data = os.urandom(size)
    path = os.path.join(root, rel)
    try:
        f = open(path, "wb")
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path))
        f = open(path, "wb")
    with f:
        f.write(data)
    out.write("%d\t%s\t%s\t%d\n" % (i, rel, hashlib.md5(data).hexdigest(), size))
PY
psql_p -c "CREATE TABLE store_fifth AS SELECT * FROM store_files WHERE id <= $FILES / 5" \
    -c "ALTER TABLE store_fifth ADD PRIMARY KEY (id)" \
    -c "VACUUM ANALYZE store_files" -c "VACUUM ANALYZE store_fifth"
wait_caught_up
bench_config "$(file_checksum_task files "$store" "$PARALLELISM")"

per=$(( FILES >= 1000 ? 500 : (FILES + 1) / 2 ))
md5sum_2() { find "$store" -type f -print0 | xargs -0 -P 2 -n "$per" md5sum >/dev/null; }
md5sum_2                                     # warm
baseline() { md5sum_2; }
best_of files
findings=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tasks"][0]["findings"])' "$CLUSTER_DIR/run.json")
[[ $findings == 0 ]] || { echo "unexpected findings: $findings" >&2; exit 1; }

bench_config "$(file_checksum_task files "$store" "$PARALLELISM")
$(file_checksum_task fifth "$store" "$PARALLELISM" store_fifth)"
rss_ratio fifth files
result "file_checksum: $FILES files x $FILE_BYTES B; md5sum x2 (xargs -n $per) ${base}s; pgmaint task ${task}s (whole cycle ${wall}s, parallelism $PARALLELISM); speed ratio $(ratio "$base" "$task")x (cycle $(ratio "$base" "$wall")x); peak RSS 1/5 ${rss_small} MiB, all ${rss_big} MiB (${rss_x}x)"
