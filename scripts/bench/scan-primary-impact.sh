#!/usr/bin/env bash
# Primary impact: pgbench TPC-B (4 clients) on the primary, three times: idle, while
# pgmaint scans the paused replica, and while the same scan runs on the primary itself.
# The primary and pgbench are pinned to CPU 0, the replica and pgmaint to CPU 1
# (goal: >= 0.95 of idle TPS while pgmaint scans the replica).
#   SECONDS_EACH=10   ROUNDS=3   ROWS=8192 (x 64 KiB = 512 MiB per scan pass)   SCALE=10
source "$(dirname "$0")/scan-common.sh"
SECONDS_EACH=${SECONDS_EACH:-10}
ROUNDS=${ROUNDS:-3}
max() { if ((${1:-0} > ${2:-0})); then echo "$1"; else echo "$2"; fi; }
ROWS=${ROWS:-8192}
SCALE=${SCALE:-10}
[[ $(nproc) -ge 2 ]] || { echo "needs 2 CPUs" >&2; exit 2; }
bench_cluster bench-primary-impact

# Pin a server: its postmaster and every process it has started (backends it forks
# later inherit the postmaster's affinity).
pin() {
    local pid
    pid=$(head -1 "$DATA/$1/postmaster.pid")
    taskset -a -p -c "$2" "$pid" >/dev/null
    for c in $(pgrep -P "$pid"); do taskset -a -p -c "$2" "$c" >/dev/null; done
}
pin primary 0
pin r1 1

echo "seeding pgbench (scale $SCALE) and $ROWS x 64 KiB of bytea ..." >&2
"$PG_BIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres app >/dev/null 2>&1
seed_blobs "$ROWS"
psql_p -c "CHECKPOINT"
wait_caught_up
bench_config "$(row_checksum_task blobs 2)"
query="SELECT count(*) FROM blobs WHERE md5(payload) <> payload_md5"
psql_p -Atc "$query" >/dev/null; psql_r -Atc "$query" >/dev/null     # warm both caches

tps() {
    taskset -c 0 "$PG_BIN/pgbench" -n -c 4 -j 1 -T "$SECONDS_EACH" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres app 2>/dev/null |
        sed -n 's/^tps = \([0-9]*\)[.0-9]* .*/\1/p' | head -1
}
# while_looping CMD…: measure TPS while CMD runs over and over in the background.
while_looping() {
    local stop=$CLUSTER_DIR/stop.flag n=0
    rm -f "$stop"
    ( while [[ ! -e $stop ]]; do "$@" >/dev/null 2>&1 || true; done ) &
    local loop=$!
    sleep 1
    tps
    touch "$stop"
    wait "$loop"
}

# Idle and replica-scan rounds alternate, best of $ROUNDS each: other load on a shared
# machine only ever lowers a number, and alternating spreads it over both.
idle=0 replica=0
for ((r = 0; r < ROUNDS; r++)); do
    idle=$(max "$idle" "$(tps)")
    replica=$(max "$replica" "$(while_looping taskset -c 1 "$PGMAINT" --config "$BENCH_CONFIG" run --task blobs)")
done
primary=$(while_looping taskset -c 1 "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d app -Atc "$query")
runs=$(psql_p -Atc "SELECT count(*) FROM pgmaint.runs WHERE state = 'succeeded'")
[[ $(psql_r -Atc "SELECT pg_get_wal_replay_pause_state()") == "not paused" ]] || { echo "replica left paused" >&2; exit 1; }
result "primary impact (pgbench TPC-B, 4 clients, ${SECONDS_EACH}s each, best of $ROUNDS alternating rounds): idle $idle tps; pgmaint scanning the paused replica $replica tps ($(ratio "$replica" "$idle")x of idle, $runs scan cycles); same scan on the primary $primary tps ($(ratio "$primary" "$idle")x of idle); goal >= 0.95x while scanning the replica"
