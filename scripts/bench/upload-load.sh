#!/usr/bin/env bash
# Load rate of the uploader (COPY) against batched INSERT, measured in the same run.
#   ROWS=1000000          rows loaded by COPY and by pgmaint
#   INSERT_ROWS=200000    rows of the row-by-row INSERT baseline (it is slow; the
#                         rate is what is compared)
# Baselines: INSERT one row per statement, 1,000 statements per transaction; and
# multi-row INSERT … VALUES of 1,000 rows per statement. Goal: pgmaint's merge load
# >= 10x the batched INSERT baseline.
source "$(dirname "$0")/upload-common.sh"
ROWS=${ROWS:-1000000}
INSERT_ROWS=${INSERT_ROWS:-200000}
upload_cluster bench-upload-load

for t in t_insert t_values t_copy t_merge t_swap; do
    psql_p -c "CREATE TABLE $t (id bigint PRIMARY KEY, n integer NOT NULL, v text)"
done
echo "generating $ROWS rows of CSV ..." >&2
psql_p -c "\\copy (SELECT g AS id, g % 1000 AS n, md5(g::text) AS v FROM generate_series(1, $ROWS) g) TO '$work/rows.csv' (FORMAT csv, HEADER true)"
python3 - "$work" "$INSERT_ROWS" "$ROWS" <<'PY'
import sys
work, n_ins, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
import hashlib
with open(work + "/insert.sql", "w") as f:
    for g in range(1, n_ins + 1):
        if g % 1000 == 1:
            f.write("BEGIN;\n")
        f.write("INSERT INTO t_insert (id, n, v) VALUES (%d, %d, '%s');\n" % (g, g % 1000, hashlib.md5(str(g).encode()).hexdigest()))
        if g % 1000 == 0 or g == n_ins:
            f.write("COMMIT;\n")
with open(work + "/values.sql", "w") as f:
    for start in range(1, n + 1, 1000):
        rows = ",".join("(%d,%d,'%s')" % (g, g % 1000, hashlib.md5(str(g).encode()).hexdigest())
                        for g in range(start, min(start + 1000, n + 1)))
        f.write("INSERT INTO t_values (id, n, v) VALUES %s;\n" % rows)
PY

t0=$(now); psql_p -f "$work/insert.sql" >/dev/null; t1=$(now)
s_insert=$(secs "$t0" "$t1")
t0=$(now); psql_p -f "$work/values.sql" >/dev/null; t1=$(now)
s_values=$(secs "$t0" "$t1")
t0=$(now); psql_p -c "\\copy t_copy FROM '$work/rows.csv' (FORMAT csv, HEADER true)"; t1=$(now)
s_copy=$(secs "$t0" "$t1")

cp "$work/rows.csv" "$work/merge.csv"
fake_upload load merge "$work/merge.csv" '{"target": "public.t_merge", "key": ["id"]}' >/dev/null
t0=$(now); "$PGMAINT" --config "$UPLOAD_CONFIG" uploader --once >/dev/null 2>"$work/merge.log"; t1=$(now)
s_merge=$(secs "$t0" "$t1")
cp "$work/rows.csv" "$work/swap.csv"
fake_upload load swap "$work/swap.csv" '{"target": "public.t_swap"}' >/dev/null
t0=$(now); "$PGMAINT" --config "$UPLOAD_CONFIG" uploader --once >/dev/null 2>"$work/swap.log"; t1=$(now)
s_swap=$(secs "$t0" "$t1")
for t in t_insert t_values t_copy t_merge t_swap; do
    n=$(psql_p -Atc "SELECT count(*) FROM $t")
    want=$ROWS; [[ $t == t_insert ]] && want=$INSERT_ROWS
    [[ $n == "$want" ]] || { echo "$t holds $n rows, expected $want" >&2; exit 1; }
done

r_insert=$(rate "$INSERT_ROWS" "$s_insert")
r_values=$(rate "$ROWS" "$s_values")
r_copy=$(rate "$ROWS" "$s_copy")
r_merge=$(rate "$ROWS" "$s_merge")
r_swap=$(rate "$ROWS" "$s_swap")
result "load: baseline INSERT 1 row/statement, 1,000/transaction: $INSERT_ROWS rows in ${s_insert}s = $r_insert rows/s"
result "load: baseline INSERT ... VALUES 1,000 rows/statement: $ROWS rows in ${s_values}s = $r_values rows/s"
result "load: psql \\copy (raw COPY): $ROWS rows in ${s_copy}s = $r_copy rows/s"
result "load: pgmaint merge (COPY + MD5 check + upsert, one transaction): $ROWS rows in ${s_merge}s = $r_merge rows/s; $(ratio "$r_merge" "$r_insert")x batched INSERT, $(ratio "$r_merge" "$r_values")x multi-row VALUES (goal >= 10x batched INSERT)"
result "load: pgmaint swap (COPY into staging + PK build + ANALYZE + swap): $ROWS rows in ${s_swap}s = $r_swap rows/s; $(ratio "$r_swap" "$r_insert")x batched INSERT"
