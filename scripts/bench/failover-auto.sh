#!/usr/bin/env bash
# Automatic failover: the outage from the primary's kill to the first committed write
# on the new primary, with `pgmaint daemon` (failover.automatic = true) watching a
# primary and two replicas, next to PostgreSQL alone on a cluster of the same shape.
#   daemon    cluster.sh's config (primary, r1, r2) plus [failover] automatic = true,
#             primary_down_after / check_interval from SETTINGS, daemon.listen. Once
#             /metrics says pgmaint_primary_up 1, the primary is killed (cluster.sh stop
#             primary --mode immediate, i.e. pg_ctl stop -m immediate) and an INSERT is
#             retried every 10 ms against both replicas' ports until one commits. The
#             daemon chooses the candidate, promotes it and re-points the other replica;
#             its "failover" log lines and /metrics (pgmaint_failover_seconds, counted
#             from its first failed check, so without the wait for that check) are
#             printed.
#   baseline  PostgreSQL alone, no detection at all: a fresh cluster of the same shape,
#             the primary killed the same way, then at once `SELECT pg_promote()` on r1
#             (in the background) and the same write loop on both ports. Both figures
#             are timed from just before the kill command.
# Anchors, not measured here: repmgr's default detection 60 s (reconnect_attempts 6 ×
# reconnect_interval 10 s), Patroni's default leader key ttl 30 s.
#   SETTINGS="10s,2s 2s,1s"   (primary_down_after,check_interval per case; 10s,2s are
#   the defaults)   RUNS=1 (cases and baseline repeated)   AFTER=0 (seconds the daemon
#   goes on after the failover before it is stopped; its whole log is kept in
#   $BENCH_ROOT/failover-auto-DOWN_AFTER.log)
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/failover-common.sh"
source "$(dirname "$0")/daemon-common.sh"
SETTINGS=${SETTINGS:-10s,2s 2s,1s}
RUNS=${RUNS:-1}
AFTER=${AFTER:-0}
WRITE_LIMIT=120

# fresh_cluster NAME: a primary and two replicas in $BENCH_ROOT/NAME, pgmaint's schema and
# the probe table replayed on both replicas. Brought down on exit (with the daemon).
fresh_cluster() {
    CLUSTER_DIR=$BENCH_ROOT/$1
    trap 'stop_daemon; bash "$REPO/scripts/cluster.sh" down --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true' EXIT
    bash "$REPO/scripts/cluster.sh" down --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true
    bash "$REPO/scripts/cluster.sh" up --replicas 2 --dir "$CLUSTER_DIR" >/dev/null
    # shellcheck disable=SC1091
    set -a; source "$CLUSTER_DIR/cluster.env"; set +a
    CONFIG_BASE=$CLUSTER_DIR/pgmaint.toml
    "$PGMAINT" --config "$CONFIG_BASE" init >/dev/null 2>&1
    psql_p -c "CREATE TABLE failover_probe (at timestamptz)"
    local lsn
    lsn=$(psql_p -Atc "SELECT pg_current_wal_flush_lsn()")
    wait_replayed "$R1_PORT" "$lsn"
    wait_replayed "$R2_PORT" "$lsn"
}

drop_cluster() {
    stop_daemon
    bash "$REPO/scripts/cluster.sh" down --dir "$CLUSTER_DIR" >/dev/null 2>&1 || true
    trap - EXIT
}

# port_name PORT: r1 or r2.
port_name() { if [[ $1 == "$R1_PORT" ]]; then echo r1; else echo r2; fi; }

# kill_primary: pg_ctl stop -m immediate on the primary; sets T_KILL (just before) and
# T_DOWN (when pg_ctl returned: the postmaster is gone).
kill_primary() {
    T_KILL=$(now)
    bash "$REPO/scripts/cluster.sh" stop primary --mode immediate --dir "$CLUSTER_DIR" >/dev/null
    T_DOWN=$(now)
}

baseline() {
    local t1 port pid
    fresh_cluster failover-auto-base
    kill_primary
    psql_at "$R1_PORT" -Atc "SELECT pg_promote(true, 60)" >/dev/null 2>&1 &
    pid=$!
    port=$(first_write_any "$WRITE_LIMIT" "$R1_PORT" "$R2_PORT") || { echo "baseline: no write within ${WRITE_LIMIT}s" >&2; exit 1; }
    t1=$(now)
    wait "$pid" || true
    result "failover-auto baseline, PostgreSQL alone (kill, then at once pg_promote() on r1, first write): kill -> first write $(secs "$T_KILL" "$t1")s (on $(port_name "$port"); pg_ctl stop took $(secs "$T_KILL" "$T_DOWN")s)"
    drop_cluster
}

# one_case DOWN_AFTER CHECK_INTERVAL
one_case() {
    local down=$1 every=$2 t1 port listen metrics i secs total
    fresh_cluster failover-auto
    listen=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    config "$CLUSTER_DIR/daemon.toml" "[daemon]
listen = \"$listen\"

[failover]
automatic = true
primary_down_after = \"$down\"
check_interval = \"$every\""
    start_daemon "$CLUSTER_DIR/daemon.toml" "$CLUSTER_DIR/daemon.log"
    # The watch has reached the primary, and both replicas stream.
    for i in $(seq 1 100); do
        curl -fsS "http://$listen/metrics" 2>/dev/null | grep -q '^pgmaint_primary_up 1' && break
        ((i < 100)) || { cat "$CLUSTER_DIR/daemon.log" >&2; echo "the daemon never reached the primary" >&2; exit 1; }
        sleep 0.1
    done
    [[ $(psql_p -Atc "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == 2 ]] ||
        { echo "both replicas must stream before the kill" >&2; exit 1; }
    # A random phase against the daemon's check_interval, as a real crash would have.
    sleep "$(python3 -c "import random; print(round(random.uniform(0, ${every%s}), 2))")"
    kill_primary
    port=$(first_write_any "$WRITE_LIMIT" "$R1_PORT" "$R2_PORT") || {
        cat "$CLUSTER_DIR/daemon.log" >&2; echo "no write within ${WRITE_LIMIT}s" >&2; exit 1; }
    t1=$(now)
    # The daemon records the failover once it uses the new primary.
    metrics=
    for i in $(seq 1 300); do
        metrics=$(curl -fsS "http://$listen/metrics" 2>/dev/null || true)
        grep -q '^pgmaint_failover_seconds' <<<"$metrics" && break
        sleep 0.1
    done
    echo "--- daemon log, failover steps (primary_down_after = $down, check_interval = $every):"
    grep -E 'failover|the primary (does not answer|is down)|pg_promote|promoted|re-pointed' "$CLUSTER_DIR/daemon.log" || true
    echo "--- /metrics after the failover:"
    grep -E '^pgmaint_(failover|primary_up)' <<<"$metrics" || true
    secs=$(awk '$1 == "pgmaint_failover_seconds" { printf "%.2f", $2 }' <<<"$metrics")
    total=$(secs "$T_KILL" "$t1")
    result "failover-auto, pgmaint daemon, primary_down_after = $down, check_interval = $every: kill -> first write ${total}s" \
        "(on $(port_name "$port"); pgmaint_failover_seconds ${secs:-missing}, from the daemon's first failed check;" \
        "pg_ctl stop took $(secs "$T_KILL" "$T_DOWN")s)"
    sleep "$AFTER"
    stop_daemon
    cp "$CLUSTER_DIR/daemon.log" "$BENCH_ROOT/failover-auto-$down.log"
    drop_cluster
}

[[ -x $PGMAINT ]] || { echo "missing $PGMAINT: cargo build --release -p pgmaint" >&2; exit 2; }
for _ in $(seq 1 "$RUNS"); do
    baseline
    for s in $SETTINGS; do one_case "${s%,*}" "${s#*,}"; done
done
echo "anchors (defaults, not measured): repmgr detection 60 s (6 x 10 s), Patroni leader key ttl 30 s"
