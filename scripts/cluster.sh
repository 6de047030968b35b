#!/usr/bin/env bash
# Throwaway PostgreSQL primary + N streaming replicas on loopback, for pgmaint
# tests and demos.  Run `scripts/cluster.sh --help` for usage.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage:
  scripts/cluster.sh up      [--replicas N] [--dir DIR]
  scripts/cluster.sh down    [--dir DIR]
  scripts/cluster.sh status  [--dir DIR]
  scripts/cluster.sh start   NAME [--dir DIR]
  scripts/cluster.sh stop    NAME [--dir DIR] [--mode fast|immediate|smart]
  scripts/cluster.sh restart NAME [--dir DIR] [--mode fast|immediate|smart]

A throwaway PostgreSQL primary plus N streaming replicas (default 1) on free
ports of 127.0.0.1, with trust authentication for user postgres.

  up       create and start the cluster (no-op if it is already running;
           leftover stopped data at DIR is wiped and recreated)
  down     stop every server and delete DIR and the data area (safe to repeat)
  status   one line per server: name, port, state, recovery, replay pause
           state, receive/replay LSN, WAL receiver status (for the primary:
           its current WAL LSN).  Exit 0 if all servers run, 3 otherwise
  start|stop|restart NAME
           act on one server (NAME = primary or r1, r2, ...); default mode
           for stop/restart is fast.  start/restart of a replica waits until
           it streams again (if the primary is up)

Options:
  --replicas N   number of replicas for `up` (default 1)
  --dir DIR      cluster directory (default $PGMAINT_CLUSTER_DIR or
                 <repo>/target/pgmaint-cluster)
  --mode MODE    shutdown mode for stop/restart
  -h, --help     this help

Files written under DIR:
  pgmaint.toml   ready-to-use pgmaint config (primary, replicas, results dir)
  cluster.env    KEY=VALUE lines: PRIMARY_PORT, R1_PORT.., PG_BIN, DATA,
                 RUN_AS, SOCKET_DIR, ...
  results/       pgmaint results directory (owned by the invoking user)
  datadir        path of the data area (DIR/data, or /tmp/pgmaint-cluster.*
                 when running as root and user postgres cannot reach DIR)
The data area holds primary/, r1/.., <name>.log and sock/.

Environment:
  PG_BIN                   PostgreSQL bin dir (default: newest
                           /usr/lib/postgresql/*/bin; apt-installed if root)
  PGMAINT_CLUSTER_DIR      default for --dir
  PGMAINT_KEEP_ON_FAILURE  if 1, a failed `up` leaves its servers/files
  PGMAINT_READY_TIMEOUT    seconds to wait for replicas to stream (default 30)
  PGMAINT_CLUSTER_FRESH    if 1, `up` runs initdb for this cluster instead of
                           cloning the shared template, so that its system
                           identifier differs from every other cluster's

As root, the servers run as user postgres (created if missing) via runuser.
EOF
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$SCRIPT_DIR/.." && pwd -P)
# shellcheck source=lib/pg.sh
source "$SCRIPT_DIR/lib/pg.sh"

umask 022
# Do not let the caller's libpq/server environment leak into our commands.
unset PGHOST PGHOSTADDR PGPORT PGDATA PGUSER PGDATABASE PGSERVICE PGSERVICEFILE \
    PGOPTIONS PGPASSWORD PGPASSFILE PGSSLMODE PGTARGETSESSIONATTRS PGAPPNAME 2>/dev/null || true

TEMPLATE_REV=1
READY_TIMEOUT=${PGMAINT_READY_TIMEOUT:-30}

# ----------------------------------------------------------- arguments ----
CMD=""
NAME=""
REPLICAS=1
DIR=${PGMAINT_CLUSTER_DIR:-$REPO/target/pgmaint-cluster}
MODE=""

need_arg() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help | help)
            usage
            exit 0
            ;;
        --replicas) need_arg "$@"; REPLICAS=$2; shift 2 ;;
        --replicas=*) REPLICAS=${1#*=}; shift ;;
        --dir) need_arg "$@"; DIR=$2; shift 2 ;;
        --dir=*) DIR=${1#*=}; shift ;;
        --mode) need_arg "$@"; MODE=$2; shift 2 ;;
        --mode=*) MODE=${1#*=}; shift ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *)
            if [[ -z $CMD ]]; then
                CMD=$1
            elif [[ -z $NAME ]]; then
                NAME=$1
            else
                die "unexpected argument: $1 (see --help)"
            fi
            shift
            ;;
    esac
done

[[ -n $CMD ]] || { usage >&2; exit 2; }
case $CMD in
    up | down | status) [[ -z $NAME ]] || die "$CMD takes no NAME argument" ;;
    start | stop | restart) [[ -n $NAME ]] || die "$CMD needs a server NAME (primary, r1, r2, ...)" ;;
    *) die "unknown command: $CMD (see --help)" ;;
esac
[[ $REPLICAS =~ ^[0-9]+$ ]] && ((REPLICAS <= 32)) || die "--replicas must be an integer between 0 and 32"
case ${MODE:-fast} in fast | immediate | smart) ;; *) die "--mode must be fast, immediate or smart" ;; esac
[[ -n $DIR ]] || die "--dir must not be empty"
[[ $DIR == /* ]] || DIR=$PWD/$DIR
DIR=${DIR%/}
# Values go unquoted into cluster.env and into TOML strings.
[[ $DIR =~ ^[A-Za-z0-9_./+@%,:=-]+$ ]] ||
    die "--dir '$DIR' contains characters (whitespace, quotes, ...) that cluster.env/pgmaint.toml cannot carry; use a simpler path"
[[ $DIR != / ]] || die "--dir must not be /"

# Everything below uses absolute paths; a cwd that user postgres cannot
# enter (e.g. under /root) would only produce warnings from initdb/pg_ctl.
cd /

MARKER=.pgmaint-cluster # in DIR
DATA_MARKER=.pgmaint-data # in the data area

# ------------------------------------------------------- cluster state ----
# Loads DATA / SOCKET_DIR (and cluster.env values if present) for DIR.
# Returns 1 if DIR holds no cluster.
declare -A ENV=()
load_state() {
    DATA="" SOCKET_DIR=""
    ENV=()
    [[ -d $DIR ]] || return 1
    if [[ -f $DIR/cluster.env ]]; then
        local k v
        while IFS='=' read -r k v; do
            [[ $k =~ ^[A-Z0-9_]+$ ]] && ENV[$k]=$v
        done <"$DIR/cluster.env"
    fi
    if [[ -f $DIR/datadir ]]; then
        DATA=$(<"$DIR/datadir")
    elif [[ -n ${ENV[DATA]:-} ]]; then
        DATA=${ENV[DATA]}
    fi
    if [[ -f $DIR/sockdir ]]; then
        SOCKET_DIR=$(<"$DIR/sockdir")
    elif [[ -n ${ENV[SOCKET_DIR]:-} ]]; then
        SOCKET_DIR=${ENV[SOCKET_DIR]}
    fi
    [[ -n $DATA ]]
}

# Server names present in the data area, primary first.
server_names() {
    local d n names=()
    [[ -n $DATA && -d $DATA ]] || return 0
    [[ -d $DATA/primary ]] && echo primary
    for d in "$DATA"/r[0-9]*; do
        [[ -d $d ]] || continue
        n=${d##*/}
        [[ $n =~ ^r[0-9]+$ ]] && names+=("${n#r}")
    done
    if ((${#names[@]})); then printf 'r%s\n' $(printf '%s\n' "${names[@]}" | sort -n); fi
}

port_of() { # name
    local key
    if [[ $1 == primary ]]; then key=PRIMARY_PORT; else key=R${1#r}_PORT; fi
    printf '%s\n' "${ENV[$key]:-}"
}

any_running() {
    local n
    for n in $(server_names); do
        pm_pid "$DATA/$n" >/dev/null && return 0
    done
    return 1
}

# Remove DIR's servers and files. Refuses to delete directories that do not
# look like ours.
destroy() {
    local n
    load_state || true
    if [[ -n $DATA && -d $DATA ]]; then
        # Replicas first, then the primary.
        # Stop all servers in parallel (immediate mode: nothing to keep).
        for n in $(server_names); do
            pm_stop "$DATA/$n" immediate &
        done
        wait
        if [[ -f $DATA/$DATA_MARKER ]]; then
            rm -rf -- "$DATA"
        else
            warn "not deleting $DATA: it lacks the $DATA_MARKER marker"
        fi
    fi
    if [[ -n $SOCKET_DIR && $SOCKET_DIR == /tmp/pgmaint-sock.* && -d $SOCKET_DIR ]]; then
        rm -rf -- "$SOCKET_DIR"
    fi
    if [[ -d $DIR ]]; then
        if [[ -f $DIR/$MARKER ]]; then
            rm -rf -- "$DIR"
        elif rmdir -- "$DIR" 2>/dev/null; then
            :
        else
            die "$DIR exists but is not a pgmaint cluster directory (no $MARKER); refusing to delete it"
        fi
    fi
}

check_run_as_matches() {
    if [[ -n ${ENV[RUN_AS]:-} && ${ENV[RUN_AS]} != "$RUN_AS" ]]; then
        die "cluster at $DIR runs as '${ENV[RUN_AS]}' but this invocation would use '$RUN_AS'; run as $([[ ${ENV[RUN_AS]} == postgres ]] && echo root || echo "${ENV[RUN_AS]}")"
    fi
}

# ------------------------------------------------------------ template ----
TEMPLATE_CONF="
# ---- pgmaint test cluster ----
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
fsync = off
full_page_writes = on
# pg_rewind (a former primary rejoined as a standby) needs hint-bit changes in WAL
wal_log_hints = on
synchronous_commit = on
max_connections = 100
shared_buffers = 128MB
logging_collector = off
# per-server settings (port, cluster_name, socket dir, ...)
include_if_exists = 'pgmaint-local.conf'
"
TEMPLATE_HBA="# pgmaint test cluster: trust everything local
local   all             all                     trust
local   replication     all                     trust
host    all             all     127.0.0.1/32    trust
host    replication     all     127.0.0.1/32    trust
"

# Sets TEMPLATE to a ready initdb'd data dir (with database app and amcheck),
# building it once per PostgreSQL version/config under a lock.
ensure_template() {
    local key base lock tmp sock locale ok=0
    if [[ ${PGMAINT_CLUSTER_FRESH:-0} == 1 ]]; then
        # A cluster of its own: initdb gives it a system identifier no other has.
        TEMPLATE=$DATA/template
    else
        key=$(printf '%s\n' "$TEMPLATE_REV" "$PG_VERSION_STRING" "$TEMPLATE_CONF" "$TEMPLATE_HBA" | md5sum | cut -c1-10)
        base=$REPO/target
        if ! mkdir -p "$base" 2>/dev/null || ! [[ -w $base ]] || ! run_as_can_access "$base"; then
            base=/tmp
        fi
        TEMPLATE=$base/pgmaint-initdb-template-$PG_MAJOR-$RUN_AS-$key
        [[ -f $TEMPLATE/PG_VERSION ]] && return 0
    fi

    lock=$TEMPLATE.lock
    exec {lockfd}>>"$lock" || die "cannot create lock file $lock"
    flock -w 300 "$lockfd" || die "timed out waiting for template lock $lock"
    if [[ -f $TEMPLATE/PG_VERSION ]]; then
        exec {lockfd}>&-
        return 0
    fi
    if [[ -e $TEMPLATE ]]; then
        rm -rf -- "$TEMPLATE" # incomplete leftover
    fi
    log "building initdb template $TEMPLATE (once per PostgreSQL version)"
    tmp=$TEMPLATE.tmp.$$
    rm -rf -- "$tmp"
    mkdir -m 700 "$tmp"
    give_to_run_as "$tmp"
    sock=$(mktemp -d /tmp/pgmaint-tmplsock.XXXXXX)
    give_to_run_as "$sock"
    for locale in C.UTF-8 C; do
        if run_pg "$PG_BIN/initdb" -D "$tmp" -U postgres --auth=trust -E UTF8 --locale="$locale" \
            --no-sync --no-instructions >"$sock/initdb.log" 2>&1; then
            ok=1
            break
        fi
        run_pg find "$tmp" -mindepth 1 -delete 2>/dev/null || true
    done
    if ((ok == 0)); then
        cat "$sock/initdb.log" >&2 || true
        rm -rf -- "$tmp" "$sock"
        die "initdb failed"
    fi
    printf '%s' "$TEMPLATE_CONF" | run_pg tee -a "$tmp/postgresql.conf" >/dev/null
    printf '%s' "$TEMPLATE_HBA" | write_pg_file "$tmp/pg_hba.conf"
    if ! run_pg "$PG_BIN/pg_ctl" -D "$tmp" -w -t 60 -l "$sock/server.log" \
        -o "-c listen_addresses='' -c unix_socket_directories='$sock' -p 5432" start >/dev/null; then
        cat "$sock/server.log" >&2 || true
        rm -rf -- "$tmp" "$sock"
        die "could not start the template server"
    fi
    ok=0
    if run_pg "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p 5432 -U postgres -d template1 \
        -c "CREATE EXTENSION IF NOT EXISTS amcheck" \
        -c "CREATE DATABASE app" >"$sock/psql.log" 2>&1 &&
        run_pg "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p 5432 -U postgres -d app \
            -c "CREATE EXTENSION IF NOT EXISTS amcheck" -c "CHECKPOINT" >>"$sock/psql.log" 2>&1; then
        ok=1
    fi
    run_pg "$PG_BIN/pg_ctl" -D "$tmp" -m fast -w -t 60 stop >/dev/null || pm_stop "$tmp" immediate
    if ((ok == 0)); then
        cat "$sock/psql.log" "$sock/server.log" >&2 || true
        rm -rf -- "$tmp" "$sock"
        die "could not prepare the template (database app / extension amcheck)"
    fi
    rm -f -- "$tmp/postmaster.opts"
    rm -rf -- "$sock"
    mv -T -- "$tmp" "$TEMPLATE"
    exec {lockfd}>&-
}

# ------------------------------------------------------------- servers ----
write_local_conf() { # name port
    local name=$1 port=$2 extra=""
    if [[ $name != primary ]]; then
        extra="hot_standby = on
hot_standby_feedback = off
"
    fi
    printf "port = %s\ncluster_name = '%s'\nunix_socket_directories = '%s'\n%s" \
        "$port" "$name" "$SOCKET_DIR" "$extra" | write_pg_file "$DATA/$name/pgmaint-local.conf"
}

# Start server NAME on a fresh free port, retrying on port clashes.
# Sets ENV[...PORT].
start_new_server() { # name
    local name=$1 dir=$DATA/$1 log=$DATA/$1.log attempt size key
    if [[ $name == primary ]]; then key=PRIMARY_PORT; else key=R${name#r}_PORT; fi
    for attempt in 1 2 3 4 5; do
        pick_port
        write_local_conf "$name" "$PICKED_PORT"
        size=0
        [[ -f $log ]] && size=$(stat -c %s "$log")
        if run_pg "$PG_BIN/pg_ctl" -D "$dir" -w -t 60 -l "$log" start >/dev/null 2>&1; then
            ENV[$key]=$PICKED_PORT
            return 0
        fi
        if tail -c +"$((size + 1))" "$log" 2>/dev/null |
            grep -qiE 'could not bind|address already in use|could not create any TCP/IP sockets|could not create lock file'; then
            warn "$name: port $PICKED_PORT was taken, retrying with another port"
            pm_stop "$dir" immediate
            continue
        fi
        tail -n 30 "$log" >&2 || true
        die "$name failed to start (log: $log)"
    done
    tail -n 30 "$log" >&2 || true
    die "$name failed to start after $attempt attempts (port clashes?)"
}

# Wait until replica NAME (on PORT) is in recovery and streaming.
wait_streaming() { # name port [timeout]
    local name=$1 port=$2 timeout=${3:-$READY_TIMEOUT} deadline out=""
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        out=$(pg_query "$port" postgres \
            "SELECT pg_is_in_recovery()::text || ' ' || coalesce((SELECT status FROM pg_stat_wal_receiver), 'no-walreceiver')" \
            2>/dev/null) || out="(cannot connect)"
        [[ $out == "true streaming" ]] && return 0
        sleep 0.1
    done
    tail -n 20 "$DATA/$name.log" >&2 || true
    die "replica $name (port $port) is not streaming after ${timeout}s (last state: ${out:-none}; log: $DATA/$name.log)"
}

write_outputs() {
    local n port tmp
    tmp=$DIR/pgmaint.toml.tmp
    {
        echo "# Generated by scripts/cluster.sh up; deleted by scripts/cluster.sh down."
        echo "[primary]"
        echo "dsn = \"host=127.0.0.1 port=${ENV[PRIMARY_PORT]} user=postgres dbname=app\""
        for n in $(server_names); do
            [[ $n == primary ]] && continue
            port=$(port_of "$n")
            echo
            echo "[[replicas]]"
            echo "name = \"$n\""
            echo "dsn  = \"host=127.0.0.1 port=$port user=postgres dbname=app\""
        done
        echo
        echo "[limits]"
        echo 'max_pause = "2h"'
        echo 'max_replay_backlog = "8GB"'
        echo 'lease = "60s"'
        echo
        echo "[results]"
        echo "dir = \"$DIR/results\""
    } >"$tmp"
    mv -f -- "$tmp" "$DIR/pgmaint.toml"

    tmp=$DIR/cluster.env.tmp
    {
        echo "CLUSTER_DIR=$DIR"
        echo "DATA=$DATA"
        echo "SOCKET_DIR=$SOCKET_DIR"
        echo "PG_BIN=$PG_BIN"
        echo "PG_MAJOR=$PG_MAJOR"
        echo "RUN_AS=$RUN_AS"
        echo "REPLICAS=$REPLICAS"
        echo "CONFIG=$DIR/pgmaint.toml"
        echo "RESULTS_DIR=$DIR/results"
        echo "PRIMARY_PORT=${ENV[PRIMARY_PORT]}"
        for n in $(server_names); do
            [[ $n == primary ]] && continue
            echo "R${n#r}_PORT=$(port_of "$n")"
        done
    } >"$tmp"
    mv -f -- "$tmp" "$DIR/cluster.env"
}

UP_DONE=0
on_up_exit() {
    local rc=$?
    ((UP_DONE == 1 || rc == 0)) && return 0
    if [[ ${PGMAINT_KEEP_ON_FAILURE:-0} == 1 ]]; then
        warn "up failed; leaving $DIR as is (PGMAINT_KEEP_ON_FAILURE=1); clean up with: $0 down --dir $DIR"
    else
        warn "up failed; removing the partial cluster at $DIR"
        (destroy) || true
    fi
    exit "$rc"
}

cmd_up() {
    local n k tstart
    tstart=$(date +%s.%N)
    if load_state && any_running; then
        check_run_as_matches
        local pport=${ENV[PRIMARY_PORT]:-?} stopped=""
        for n in $(server_names); do pm_pid "$DATA/$n" >/dev/null || stopped+=" $n"; done
        log "cluster already running at $DIR (primary on port $pport)"
        [[ -z $stopped ]] || warn "servers not running:$stopped (use: $0 start NAME --dir $DIR)"
        local have=$(($(server_names | wc -l) - 1))
        ((have == REPLICAS)) || warn "it has $have replica(s), not the $REPLICAS requested; run down first to change that"
        exit 0
    fi
    if [[ -d $DIR ]]; then
        if [[ -f $DIR/$MARKER || -n $DATA ]]; then
            log "removing leftover stopped cluster at $DIR"
            destroy
        elif [[ -n $(ls -A "$DIR") ]]; then
            die "$DIR exists, is not empty and is not a pgmaint cluster directory; choose another --dir"
        fi
    fi

    pg_check_contrib
    trap on_up_exit EXIT
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    : >"$DIR/$MARKER"

    # Data area: DIR/data unless the server user cannot reach DIR.
    if is_root && ! run_as_can_access "$DIR"; then
        DATA=$(mktemp -d /tmp/pgmaint-cluster.XXXXXX)
        log "user postgres cannot reach $DIR; keeping server data in $DATA"
    else
        DATA=$DIR/data
        mkdir -m 700 "$DATA"
    fi
    printf '%s\n' "$DATA" >"$DIR/datadir"
    : >"$DATA/$DATA_MARKER"
    give_to_run_as "$DATA"
    # Unix socket paths are limited to ~107 bytes.
    SOCKET_DIR=$DATA/sock
    if ((${#SOCKET_DIR} + 14 > 100)); then
        SOCKET_DIR=$(mktemp -d /tmp/pgmaint-sock.XXXXXX)
        printf '%s\n' "$SOCKET_DIR" >"$DIR/sockdir"
    else
        mkdir -m 700 "$SOCKET_DIR"
    fi
    give_to_run_as "$SOCKET_DIR"
    mkdir -p "$DIR/results"

    ensure_template

    # Primary.
    cp -a --reflink=auto -- "$TEMPLATE" "$DATA/primary"
    start_new_server primary
    log "primary up on 127.0.0.1:${ENV[PRIMARY_PORT]}"

    # Replicas.
    for ((k = 1; k <= REPLICAS; k++)); do
        n=r$k
        if ! run_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "${ENV[PRIMARY_PORT]}" -U postgres \
            -D "$DATA/$n" -R -X stream -C -S "$n" -c fast >"$DATA/$n.basebackup.log" 2>&1; then
            cat "$DATA/$n.basebackup.log" >&2 || true
            die "pg_basebackup for $n failed"
        fi
        start_new_server "$n"
    done
    for ((k = 1; k <= REPLICAS; k++)); do
        wait_streaming "r$k" "${ENV[R${k}_PORT]}"
        log "replica r$k streaming on 127.0.0.1:${ENV[R${k}_PORT]}"
    done

    write_outputs
    UP_DONE=1
    trap - EXIT
    log "cluster up at $DIR in $(awk -v a="$tstart" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s; config: $DIR/pgmaint.toml, env: $DIR/cluster.env"
}

cmd_down() {
    if ! [[ -d $DIR ]]; then
        log "no cluster at $DIR (nothing to do)"
        return 0
    fi
    load_state || true
    check_run_as_matches
    destroy
    log "cluster at $DIR removed"
}

cmd_status() {
    if ! load_state || [[ ! -d $DATA ]]; then
        echo "no cluster at $DIR"
        exit 3
    fi
    local n port pid all=0 info state
    echo "cluster: $DIR  data: $DATA  run-as: ${ENV[RUN_AS]:-?}"
    printf '%-8s %-6s %-8s %-9s %-13s %-14s %-14s %s\n' \
        NAME PORT STATE RECOVERY PAUSE_STATE RECEIVE_LSN REPLAY_LSN WAL_RECEIVER/WAL
    for n in $(server_names); do
        port=$(port_of "$n")
        if pid=$(pm_pid "$DATA/$n"); then
            state=running
        else
            state=stopped
            all=3
        fi
        info=""
        if [[ $state == running && -n $port ]]; then
            if [[ $n == primary ]]; then
                info=$(pg_query "$port" postgres "SELECT pg_is_in_recovery(), '-', '-', '-', 'current_lsn=' || pg_current_wal_lsn()" 2>/dev/null |
                    tr '|' ' ') || info=""
            else
                info=$(pg_query "$port" postgres \
                    "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state(),
                            coalesce(pg_last_wal_receive_lsn()::text, '-'),
                            coalesce(pg_last_wal_replay_lsn()::text, '-'),
                            coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')" 2>/dev/null |
                    tr ' |' '_ ') || info=""
            fi
            [[ -n $info ]] || info="? unreachable"
        fi
        # shellcheck disable=SC2086
        set -- $info
        printf '%-8s %-6s %-8s %-9s %-13s %-14s %-14s %s\n' "$n" "${port:-?}" "$state" \
            "${1:--}" "${2:--}" "${3:--}" "${4:--}" "${5:--}"
    done
    exit "$all"
}

cmd_server() { # start|stop|restart
    load_state && [[ -d $DATA ]] || die "no cluster at $DIR"
    check_run_as_matches
    [[ $NAME == primary || $NAME =~ ^r[0-9]+$ ]] || die "bad server name '$NAME' (primary, r1, r2, ...)"
    local dir=$DATA/$NAME log=$DATA/$NAME.log port mode=${MODE:-fast}
    [[ -d $dir ]] || die "no server '$NAME' in $DIR (have: $(server_names | tr '\n' ' '))"
    port=$(port_of "$NAME")
    case $CMD in
        stop)
            if ! pm_pid "$dir" >/dev/null; then
                log "$NAME is not running"
                return 0
            fi
            run_pg "$PG_BIN/pg_ctl" -D "$dir" -m "$mode" -w -t 60 stop >/dev/null ||
                die "pg_ctl stop of $NAME failed (log: $log)"
            log "$NAME stopped"
            return 0
            ;;
        start)
            if pm_pid "$dir" >/dev/null; then
                log "$NAME is already running (port $port)"
                return 0
            fi
            run_pg "$PG_BIN/pg_ctl" -D "$dir" -w -t 60 -l "$log" start >/dev/null || {
                tail -n 20 "$log" >&2 || true
                die "pg_ctl start of $NAME failed (log: $log)"
            }
            ;;
        restart)
            if pm_pid "$dir" >/dev/null; then
                run_pg "$PG_BIN/pg_ctl" -D "$dir" -m "$mode" -w -t 60 -l "$log" restart >/dev/null || {
                    tail -n 20 "$log" >&2 || true
                    die "pg_ctl restart of $NAME failed (log: $log)"
                }
            else
                run_pg "$PG_BIN/pg_ctl" -D "$dir" -w -t 60 -l "$log" start >/dev/null || {
                    tail -n 20 "$log" >&2 || true
                    die "pg_ctl start of $NAME failed (log: $log)"
                }
            fi
            ;;
    esac
    if [[ $NAME != primary && -n $port ]] && pm_pid "$DATA/primary" >/dev/null; then
        wait_streaming "$NAME" "$port"
    fi
    log "$NAME ${CMD}ed (port $port)"
}

# ---------------------------------------------------------------- main ----
pg_setup_run_as
case $CMD in
    up)
        pg_locate
        cmd_up
        ;;
    down)
        # PG_BIN is only needed for a graceful pg_ctl stop; fall back to signals.
        load_state || true
        PG_BIN=${PG_BIN:-${ENV[PG_BIN]:-}}
        if [[ -n $PG_BIN ]] && ! pg_bin_ok "$PG_BIN"; then PG_BIN=""; fi
        [[ -n $PG_BIN ]] || PG_BIN=$(pg_find_newest_bin || true)
        cmd_down
        ;;
    status | start | stop | restart)
        if ! load_state || [[ ! -d $DATA ]]; then
            if [[ $CMD == status ]]; then
                echo "no cluster at $DIR"
                exit 3
            fi
            die "no cluster at $DIR"
        fi
        PG_BIN=${ENV[PG_BIN]:-${PG_BIN:-}}
        if [[ -z $PG_BIN ]] || ! pg_bin_ok "$PG_BIN"; then
            PG_BIN=$(pg_find_newest_bin || true)
            [[ -n $PG_BIN ]] || die "PostgreSQL binaries not found (set PG_BIN)"
        fi
        PSQL=$PG_BIN/psql
        [[ -x $PSQL ]] || PSQL=$(command -v psql || true)
        [[ -n $PSQL ]] || die "psql not found"
        if [[ $CMD == status ]]; then cmd_status; else cmd_server; fi
        ;;
esac
