#!/usr/bin/env bash
# Failover time: from the start of `pgmaint promote` to the first committed write on the
# new primary, next to PostgreSQL alone (`pg_promote()` then the first write) on the
# same cluster, in two cases:
#   unpaused  the candidate replays as WAL arrives (no backlog)
#   paused    the candidate was paused (as a pgmaint run pauses it) and holds BACKLOG_MB
#             of received, unreplayed WAL: both must replay it before the first write
# Each case: a primary and two replicas; both replicas in the same state; the primary
# killed (pg_ctl stop -m immediate); r1 promoted by `pgmaint promote --replica r1`
# (config listing r1 only, failover.primary_down_after = 1s, the minimum), then r2 by
# PostgreSQL alone (FIRST=postgres swaps them: run both, the second replay may be
# favoured). Both are timed the same way: the promotion started in the background, and
# an INSERT retried every 10 ms until one commits. pgmaint's figure includes the down-check window; it is also given
# without it, and pgmaint's own promotion step (resume + pg_promote + polling) is given
# as it measured it.
#   BACKLOG_MB=1024   CASES="unpaused paused"   FIRST=pgmaint (or postgres: the baseline
#   promotes r1 first, pgmaint r2 second)
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/failover-common.sh"
BACKLOG_MB=${BACKLOG_MB:-1024}
CASES=${CASES:-unpaused paused}
DOWN_AFTER=${DOWN_AFTER:-1s}
FIRST=${FIRST:-pgmaint}

# one_case NAME: bring a cluster up, prepare it, fail over twice, print the figures.
one_case() {
    local name=$1 dir=$BENCH_ROOT/failover-$1 lsn0 lsn1 t0 t1 base pgm pgm_down
    CLUSTER_DIR=$dir
    trap 'bash "$REPO/scripts/cluster.sh" down --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true' EXIT
    bash "$REPO/scripts/cluster.sh" down --dir "$dir" >/dev/null 2>&1 || true
    bash "$REPO/scripts/cluster.sh" up --replicas 2 --dir "$dir" >/dev/null
    # shellcheck disable=SC1091
    set -a; source "$dir/cluster.env"; set +a
    # pgmaint promotes r1 and the baseline r2, or the other way round.
    if [[ $FIRST == pgmaint ]]; then
        PGM_NAME=r1 PGM_PORT=$R1_PORT BASE_PORT=$R2_PORT
    else
        PGM_NAME=r2 PGM_PORT=$R2_PORT BASE_PORT=$R1_PORT
    fi
    cat >"$dir/pgmaint.$PGM_NAME.toml" <<TOML
[primary]
dsn = "host=127.0.0.1 port=$PRIMARY_PORT user=postgres dbname=app"
[[replicas]]
name = "$PGM_NAME"
dsn = "host=127.0.0.1 port=$PGM_PORT user=postgres dbname=app"
[results]
dir = "$dir/results"
[failover]
primary_down_after = "$DOWN_AFTER"
max_replay_backlog = "1GB"
promote_timeout = "1h"
TOML
    "$PGMAINT" --config "$dir/pgmaint.$PGM_NAME.toml" init >/dev/null
    psql_p -c "CREATE TABLE failover_probe (at timestamptz); CREATE TABLE filler (id bigint, pad text)"
    # Both replicas have pgmaint's schema and the tables before anything is paused.
    lsn0=$(psql_p -Atc "SELECT pg_current_wal_flush_lsn()")
    wait_replayed "$R1_PORT" "$lsn0"
    wait_replayed "$R2_PORT" "$lsn0"
    if [[ $name == paused ]]; then
        psql_at "$R1_PORT" -c "SELECT pg_wal_replay_pause()" >/dev/null
        psql_at "$R2_PORT" -c "SELECT pg_wal_replay_pause()" >/dev/null
        lsn0=$(psql_p -Atc "SELECT pg_current_wal_lsn()")
        echo "writing ${BACKLOG_MB} MB of WAL while both replicas are paused ..." >&2
        local id=0
        while (($(psql_p -Atc "SELECT (pg_current_wal_lsn() - '$lsn0'::pg_lsn)::bigint / 1048576") < BACKLOG_MB)); do
            psql_p -c "INSERT INTO filler SELECT g, repeat(md5(g::text), 30) FROM generate_series($id + 1, $id + 50000) g"
            id=$((id + 50000))
        done
    else
        psql_p -c "INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 1000) g"
    fi
    lsn1=$(psql_p -Atc "SELECT pg_current_wal_flush_lsn()")
    wait_received "$R1_PORT" "$lsn1"
    wait_received "$R2_PORT" "$lsn1"
    local backlog
    backlog=$(psql_at "$R1_PORT" -Atc "SELECT pg_size_pretty(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()))")
    bash "$REPO/scripts/cluster.sh" stop primary --mode immediate --dir "$dir" >/dev/null

    step_pgmaint() {
        t0=$(now)
        "$PGMAINT" --config "$dir/pgmaint.$PGM_NAME.toml" promote --replica "$PGM_NAME" --force --json \
            >"$dir/promote.json" 2>"$dir/promote.log" &
        local pid=$!
        first_write "$PGM_PORT" "$pid" || true
        t1=$(now)
        wait "$pid" || { cat "$dir/promote.log" >&2; exit 1; }
        pgm=$(secs "$t0" "$t1")
        psql_at "$PGM_PORT" -c "CHECKPOINT" >/dev/null
    }
    step_postgres() {
        # Measured like pgmaint: the promotion in the background, the same write loop.
        t0=$(now)
        psql_at "$BASE_PORT" -Atc "SELECT pg_promote(true, 60)" >/dev/null 2>&1 &
        local pid=$!
        first_write "$BASE_PORT"
        t1=$(now)
        wait "$pid" || true
        base=$(secs "$t0" "$t1")
        psql_at "$BASE_PORT" -c "CHECKPOINT" >/dev/null
    }
    if [[ $FIRST == pgmaint ]]; then step_pgmaint; step_postgres; else step_postgres; step_pgmaint; fi
    pgm_down=$(grep -o '"down_check": [0-9.]*' "$dir/promote.json" | grep -o '[0-9.]*$')
    local net step
    net=$(echo "$pgm - $pgm_down" | bc -l | xargs printf '%.2f')
    step=$(grep -o '"promotion": [0-9.]*' "$dir/promote.json" | grep -o '[0-9.]*$' | xargs printf '%.2f')
    pgm_down=$(printf '%.2f' "$pgm_down")
    result "failover ($name candidate, backlog $backlog, $FIRST first): PostgreSQL alone (pg_promote + first write) ${base}s;" \
        "pgmaint promote -> first write ${pgm}s, of which primary_down_after window ${pgm_down}s;" \
        "without it ${net}s = $(ratio "$net" "$base")x PostgreSQL alone (its promotion step: ${step}s)"
    bash "$REPO/scripts/cluster.sh" down --dir "$dir" >/dev/null 2>&1 || true
    trap - EXIT
}

[[ -x $PGMAINT ]] || { echo "missing $PGMAINT: cargo build --release -p pgmaint" >&2; exit 2; }
for c in $CASES; do one_case "$c"; done
