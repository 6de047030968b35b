# Shared by the scan benchmarks: a throwaway cluster (brought down on exit), psql
# helpers, the tables and tasks they scan, timing and peak-RSS measurement. Source it;
# do not run it.
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# wait until the replica has replayed everything the primary has written
wait_caught_up() {
    local lsn
    lsn=$(psql_p -Atc "SELECT pg_current_wal_lsn()")
    until [[ $(psql_r -Atc "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn") == t ]]; do sleep 0.2; done
}

min() { echo "if ($1 < $2) $1 else $2" | bc -l | xargs printf '%.2f'; }
REPEAT=${REPEAT:-5}

# peak_rss_kb CMD…: run CMD, print its peak RSS in kB on fd 3 (stdout/stderr pass through).
peak_rss_kb() {
    local out
    out=$(mktemp)
    /usr/bin/time -f '%M' -o "$out" "$@"
    tail -1 "$out" >&3
    rm -f "$out"
}

# task_secs JSON NAME: seconds the task took, from `pgmaint run --json`.
task_secs() {
    python3 -c 'import json,sys
s=json.load(open(sys.argv[1]))
names=[t["name"] for t in s["tasks"]]
print("%.2f" % s["task_seconds"][names.index(sys.argv[2])])' "$1" "$2"
}

# create_blobs: an empty table blobs (id, payload bytea stored uncompressed,
# payload_md5) on the primary.
create_blobs() {
    psql_p -c "CREATE TABLE blobs (id bigint PRIMARY KEY, payload bytea, payload_md5 text)" \
        -c "ALTER TABLE blobs ALTER payload SET STORAGE EXTERNAL"
}

# insert_blobs FROM TO [BYTES]: blobs rows FROM..TO, BYTES (a multiple of 16; default
# 64 KiB) of payload each, with its md5.
insert_blobs() {
    local bytes=${3:-65536}
    psql_p -c "INSERT INTO blobs SELECT g, p, md5(p)
                 FROM (SELECT g, decode(repeat(md5(g::text), $((bytes / 16))), 'hex') AS p FROM generate_series($1, $2) g) s"
}

# seed_blobs ROWS: blobs with rows 1..ROWS, vacuumed and analyzed.
seed_blobs() {
    create_blobs
    insert_blobs 1 "$1"
    psql_p -c "VACUUM ANALYZE blobs"
}

# create_store_files: an empty file catalog store_files (id, rel_path, md5, bytes).
create_store_files() {
    psql_p -c "CREATE TABLE store_files (id int PRIMARY KEY, rel_path text NOT NULL, md5 text NOT NULL, bytes bigint NOT NULL)"
}

# load_store_files: store_files rows from stdin (id, rel_path, md5, bytes; tab-separated).
load_store_files() { psql_p -c "\\copy store_files FROM STDIN"; }

# row_checksum_task NAME PARALLELISM [TABLE]: a [[tasks]] entry checking TABLE (blobs).
row_checksum_task() {
    printf '[[tasks]]\nname = "%s"\nkind = "row_checksum"\ntable = "%s"\nkey = "id"\ncontent = "payload"\nchecksum = "payload_md5"\nparallelism = %s\n' \
        "$1" "${3:-blobs}" "$2"
}

# file_checksum_task NAME ROOT PARALLELISM [TABLE]: a [[tasks]] entry checking the files
# TABLE (store_files) lists under ROOT.
file_checksum_task() {
    printf '[[tasks]]\nname = "%s"\nkind = "file_checksum"\ntable = "%s"\nkey = "id"\npath = "rel_path"\nchecksum = "md5"\nsize = "bytes"\nroot = "%s"\nparallelism = %s\n' \
        "$1" "${4:-store_files}" "$2" "$3"
}

# rss_ratio TASK_SMALL TASK_BIG: peak RSS (MiB) of `pgmaint run --task` over each, and
# big/small, in rss_small, rss_big, rss_x.
rss_ratio() {
    local a b
    a=$( { peak_rss_kb "$PGMAINT" --config "$BENCH_CONFIG" run --task "$1" >/dev/null 2>&1; } 3>&1 )
    b=$( { peak_rss_kb "$PGMAINT" --config "$BENCH_CONFIG" run --task "$2" >/dev/null 2>&1; } 3>&1 )
    rss_small=$((a / 1024)) rss_big=$((b / 1024)) rss_x=$(ratio "$b" "$a")
}

# bench_config TOML: BENCH_CONFIG ($CLUSTER_DIR/bench.toml), the cluster's config plus
# TOML, with pgmaint's schema initialised.
bench_config() {
    BENCH_CONFIG=$CLUSTER_DIR/bench.toml
    config "$BENCH_CONFIG" "$1"
    "$PGMAINT" --config "$BENCH_CONFIG" init >/dev/null
}

# best_of TASK: $REPEAT interleaved rounds of `baseline` (a function the script defines)
# and a whole `pgmaint run --json` with BENCH_CONFIG; the best of each, in seconds, in
# base, wall (the cycle) and task (TASK's own time). Best, interleaved: the machine may
# be shared, and noise only slows things. The last summary stays in $CLUSTER_DIR/run.json.
best_of() {
    local i t0 t1
    base=999999 task=999999 wall=999999
    for ((i = 0; i < REPEAT; i++)); do
        t0=$(now); baseline; t1=$(now)
        base=$(min "$base" "$(secs "$t0" "$t1")")
        t0=$(now); "$PGMAINT" --config "$BENCH_CONFIG" run --json >"$CLUSTER_DIR/run.json" 2>/dev/null; t1=$(now)
        wall=$(min "$wall" "$(secs "$t0" "$t1")")
        task=$(min "$task" "$(task_secs "$CLUSTER_DIR/run.json" "$1")")
    done
}
