#!/usr/bin/env bash
# Soak test of `pgmaint daemon` with automatic failover, under injected faults.
# Run `scripts/soak.sh --help` for what it does and what it checks.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/soak.sh DURATION_SECONDS

Runs pgmaint's daemon with automatic failover against a throwaway primary and two
replicas (scripts/cluster.sh up --replicas 2) for DURATION_SECONDS (at least 60,
counted from the start, cluster setup included; the checks add a few seconds, a
daemon that ignores SIGTERM up to 39 s). Meanwhile scheduled tasks run (a
row_checksum over public.blobs with planted corruptions every 3 s, a 1.5 s export
every 5 s), a writer inserts into public.soak_writes on whatever server is the
primary, and faults are injected at seeded random intervals: kill -9 of a daemon
(also in the middle of a promotion), a replica restart, a primary restart or
SIGSTOP/SIGCONT shorter than failover.primary_down_after, a primary killed (a
failover follows; the old primary is then rejoined with pg_rewind, or a fresh
pg_basebackup where pg_rewind cannot do it), and an old primary that comes back
unrejoined for a while. Two daemons run for the first half, one for the second;
the last 20 s are fault-free. After a failover the soak rewrites the config
([[replicas]] = the standbys) and restarts the daemons, as an operator would.

At the end it stops everything and prints one `ok` or `VIOLATION` line per
invariant (no replica paused, no slot claimed twice, no upload applied twice, no
pgmaint write on a superseded server, one writable server at a time, findings ==
planted corruptions, committed writes kept, promotions recorded, daemons stop on
SIGTERM, scheduled work goes on after the last topology change, every primary loss
failed over), then a summary. Exit 0: no violation; 1: a violation; 2: the soak
itself failed (setup, a harness error).

Environment:
  SOAK_SEED       seed of the fault schedule (printed at start; set it to replay)
  SOAK_DIR        output directory (default <repo>/target/soak/<time>-<seed>): the
                  event log, daemon logs, samples, dumps of superseded servers,
                  server logs; the cluster lives in SOAK_DIR/cluster while it runs
  PGMAINT_BIN     the pgmaint binary to copy (default <repo>/target/debug/pgmaint,
                  built with `cargo build -p pgmaint` if missing)
  PG_BIN          as for scripts/cluster.sh

A kill "at a promotion step" uses PGMAINT_TEST_KILL_AT=<intent|repointed|pg_promote|promoted|recorded|
followers> when the binary knows that knob; otherwise the soak kills the daemon as
soon as its log shows `SELECT pg_promote` (an approximation of `promoted`).
EOF
}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$SCRIPT_DIR/.." && pwd -P)
# shellcheck source=lib/pg.sh
source "$SCRIPT_DIR/lib/pg.sh"
log() { printf 'soak: %s\n' "$*" >&2; }
warn() { printf 'soak: warning: %s\n' "$*" >&2; }
die() {
    printf 'soak: error: %s\n' "$*" >&2
    exit 2
}

umask 022
unset PGHOST PGHOSTADDR PGPORT PGDATA PGUSER PGDATABASE PGSERVICE PGSERVICEFILE \
    PGOPTIONS PGPASSWORD PGPASSFILE PGSSLMODE PGTARGETSESSIONATTRS PGAPPNAME \
    PGMAINT_PRIMARY PGMAINT_REPLICA PGMAINT_CONFIG 2>/dev/null || true

case ${1:-} in -h | --help | help) usage; exit 0 ;; esac
[[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || { usage >&2; exit 2; }
DURATION=$1
((DURATION >= 60 && DURATION <= 86400)) || die "DURATION_SECONDS must be between 60 and 86400"

# ------------------------------------------------------------- settings ----
DOWN_AFTER=4        # failover.primary_down_after (s)
PROMOTE_TIMEOUT=15  # failover.promote_timeout (s)
FOLLOW_TIMEOUT=10   # failover.follow_timeout (s)
LEASE=3             # limits.lease and daemon.leader_lease (s)
UPLOADER_LEASE=60   # uploader.lease (default)
# A daemon in a failover may legitimately take down check + promotion + followers.
TERM_BOUND=$((DOWN_AFTER + PROMOTE_TIMEOUT + FOLLOW_TIMEOUT + 10))
SETTLE=20           # fault-free seconds at the end
FAILOVER_ROOM=55    # a failover cycle starts only with this many seconds left
BLOBS=2000          # rows of public.blobs

if [[ -n ${SOAK_SEED:-} ]]; then
    [[ $SOAK_SEED =~ ^[0-9]+$ ]] || die "SOAK_SEED must be a non-negative integer"
    SEED=$((SOAK_SEED % 2147483648))
else
    SEED=$(($(od -An -N4 -tu4 /dev/urandom | tr -d ' ') % 2147483648))
fi
RNG=$SEED
# rand N: R = a number in [0, N) from the seeded generator (no subshell: the state
# must advance in this shell).
rand() {
    RNG=$(((RNG * 1103515245 + 12345) & 0x7fffffff))
    R=$(((RNG >> 8) % $1))
}

OUT=${SOAK_DIR:-$REPO/target/soak/$(date +%Y%m%d-%H%M%S)-$SEED}
[[ $OUT == /* ]] || OUT=$PWD/$OUT
OUT=${OUT%/}
[[ $OUT =~ ^[A-Za-z0-9_./+@%,:=-]+$ ]] || die "SOAK_DIR '$OUT' holds characters the configs cannot carry; use a simpler path"
[[ ! -e $OUT || -z $(ls -A "$OUT" 2>/dev/null) ]] || die "$OUT exists and is not empty"
mkdir -p "$OUT"/{daemons,configs,superseded,rejoin,ctl,server-logs}
chmod 755 "$OUT"
CTL=$OUT/ctl
CLUSTER=$OUT/cluster
EVENTS=$OUT/events.log
: >"$EVENTS"
for f in samples.csv writes_ok.csv writes_nolsn.csv writes_failed.csv superseded.csv sup_ts.csv \
    sup_slots.csv sup_uploads.csv observed_failovers.csv term_results.csv daemon_exits.csv \
    violations_runtime.txt; do
    : >"$OUT/$f"
done
cd /

MAIN_PID=$$
T0=${EPOCHREALTIME/./}
HARD_DEADLINE=$((T0 + (DURATION + 900) * 1000000)) # every background loop ends by then

# event TEXT: a time-stamped line on stdout and in events.log.
event() {
    local n=${EPOCHREALTIME/./} ds
    ds=$(((n - T0) / 100000))
    printf '[%4d.%ds] %s\n' $((ds / 10)) $((ds % 10)) "$*" | tee -a "$EVENTS"
}
elapsed() { EL=$(((${EPOCHREALTIME/./} - T0) / 1000000)); }
alive_main() { kill -0 "$MAIN_PID" 2>/dev/null && ((${EPOCHREALTIME/./} < HARD_DEADLINE)); }

declare -A COUNT=()
count() { COUNT[$1]=$((${COUNT[$1]:-0} + 1)); }

# ------------------------------------------------------------- cleanup ----
BG_PIDS=()
STOPPED_PM=""
CLUSTER_UP=0
# Exit codes: 0 no violation, 1 a violation (only from the end of the report), 2 the
# soak itself failed (die, or any other way out), 130/143 interrupted.
REPORTED=0
kill_daemons() {
    local f p
    for f in "$CTL"/*.pid; do
        [[ -f $f ]] || continue
        p=$(<"$f")
        [[ $p =~ ^[0-9]+$ ]] && kill -KILL "$p" 2>/dev/null
    done
}
cleanup() {
    local rc=$? p
    set +e
    trap - EXIT INT TERM
    if ((rc != 0 && rc != 130 && rc != 143)) && ! ((REPORTED && rc == 1)); then
        rc=2
    fi
    : >"$CTL/quit"
    [[ -n $STOPPED_PM ]] && { pkill -CONT -P "$STOPPED_PM" 2>/dev/null; kill -CONT "$STOPPED_PM" 2>/dev/null; }
    kill_daemons
    for p in "${BG_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    kill_daemons
    if ((CLUSTER_UP)); then
        if [[ -n ${DATA:-} && -d $DATA ]]; then
            cp -f "$DATA"/*.log "$OUT/server-logs/" 2>/dev/null
        fi
        [[ -n ${RESULTS_DIR:-} ]] && cp -f "$RESULTS_DIR/promotions.json" "$OUT/" 2>/dev/null
        bash "$SCRIPT_DIR/cluster.sh" down --dir "$CLUSTER" >/dev/null 2>&1 ||
            warn "cluster.sh down --dir $CLUSTER failed"
    fi
    log "output kept in $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------- binary ----
SRC_BIN=${PGMAINT_BIN:-$REPO/target/debug/pgmaint}
if [[ ! -x $SRC_BIN ]]; then
    [[ -z ${PGMAINT_BIN:-} ]] || die "PGMAINT_BIN=$SRC_BIN is not executable"
    log "building pgmaint (cargo build -p pgmaint)"
    (cd "$REPO" && cargo build -q -p pgmaint) || die "cargo build -p pgmaint failed"
fi
BIN=$OUT/pgmaint
cp "$SRC_BIN" "$BIN"
chmod 755 "$BIN"
KNOB=0
grep -aq 'PGMAINT_TEST_KILL_AT' "$BIN" && KNOB=1

echo "soak: seed $SEED (replay: SOAK_SEED=$SEED scripts/soak.sh $DURATION); output: $OUT"
echo "soak: binary $SRC_BIN ($(stat -c '%y' "$SRC_BIN" | cut -d. -f1), md5 $(md5sum <"$BIN" | cut -c1-12)), repo HEAD $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
if ((KNOB)); then
    echo "soak: the binary knows PGMAINT_TEST_KILL_AT: kills at intent/repointed/pg_promote/promoted/recorded/followers"
else
    echo "soak: the binary does not know PGMAINT_TEST_KILL_AT: a kill at a promotion step is approximated by kill -9 as soon as the daemon logs 'SELECT pg_promote'"
fi

# ------------------------------------------------------------- cluster ----
log "starting the cluster (primary + 2 replicas) in $CLUSTER"
CLUSTER_UP=1
bash "$SCRIPT_DIR/cluster.sh" up --replicas 2 --dir "$CLUSTER" >"$OUT/cluster-up.log" 2>&1 ||
    { cat "$OUT/cluster-up.log" >&2; die "cluster.sh up failed"; }
declare -A ENVV=()
while IFS='=' read -r k v; do [[ $k =~ ^[A-Z0-9_]+$ ]] && ENVV[$k]=$v; done <"$CLUSTER/cluster.env"
DATA=${ENVV[DATA]}
PG_BIN=${ENVV[PG_BIN]}
RUN_AS=${ENVV[RUN_AS]}
RESULTS_DIR=${ENVV[RESULTS_DIR]}
PSQL=$PG_BIN/psql
[[ -x $PSQL ]] || PSQL=$(command -v psql)
NODES=(primary r1 r2)
declare -A PORT=([primary]=${ENVV[PRIMARY_PORT]} [r1]=${ENVV[R1_PORT]} [r2]=${ENVV[R2_PORT]})
echo "soak: servers (by data directory): primary=${PORT[primary]} r1=${PORT[r1]} r2=${PORT[r2]}; data in $DATA"

# q PORT ARGS…: psql against PORT (database app), unaligned, bounded in time.
q() {
    local port=$1
    shift
    PGCONNECT_TIMEOUT=2 timeout -k 1 "${QT:-20}" "$PSQL" -X -q -At -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$port" -U postgres -d app "$@"
}
qc() { q "$1" -c "$2"; }
TLI_SQL="('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int"

running() { pm_pid "$DATA/$1" >/dev/null; }
pg_start() { run_pg "$PG_BIN/pg_ctl" -D "$DATA/$1" -w -t 60 -l "$DATA/$1.log" start >/dev/null 2>&1; }
pg_stop() { run_pg "$PG_BIN/pg_ctl" -D "$DATA/$1" -m "${2:-fast}" -w -t 60 stop >/dev/null 2>&1; }

# current_primary: CP_NODE/CP_TLI = the server out of recovery on the highest
# timeline (what the writer uses); CP_ALL = every server out of recovery (name:tli).
current_primary() {
    local n r
    CP_NODE="" CP_TLI=0 CP_ALL=""
    for n in "${NODES[@]}"; do
        r=$(QT=5 qc "${PORT[$n]}" "SELECT CASE WHEN pg_is_in_recovery() THEN 's' ELSE 'p' || $TLI_SQL END" 2>/dev/null) || continue
        [[ $r == p* ]] || continue
        CP_ALL+=" $n:${r#p}"
        if ((${r#p} > CP_TLI)); then
            CP_NODE=$n
            CP_TLI=${r#p}
        fi
    done
}

# streams_from NODE PORT: NODE is a standby streaming from the server on PORT.
streams_from() {
    [[ $(QT=5 qc "${PORT[$1]}" "SELECT pg_is_in_recovery()::text || ':' || coalesce((SELECT status || ':' || sender_port FROM pg_stat_wal_receiver), '-')" 2>/dev/null) == "true:streaming:$2" ]]
}

# wait_until SECONDS CMD…: poll CMD every 0.2 s; status 0 once it succeeds.
wait_until() {
    local limit=$(($1 * 1000000 + ${EPOCHREALTIME/./}))
    shift
    while ((${EPOCHREALTIME/./} < limit)); do
        "$@" && return 0
        sleep 0.2
    done
    "$@"
}

# pause_for SECONDS (fractions allowed): a fault's own length or the gap between
# faults; in small steps so that signals are seen.
pause_for() {
    local until_us
    until_us=$((${EPOCHREALTIME/./} + $(awk -v s="$1" 'BEGIN{printf "%d", s*1000000}')))
    while ((${EPOCHREALTIME/./} < until_us)); do sleep 0.2; done
}

# ---------------------------------------------------------------- seed ----
P0=${PORT[primary]}
PLANTED=()
while ((${#PLANTED[@]} < 3)); do
    rand "$BLOBS"
    k=$((R + 1))
    [[ " ${PLANTED[*]} " == *" $k "* ]] || PLANTED+=("$k")
done
PLANTED_CSV=$(IFS=,; echo "${PLANTED[*]}")
qc "$P0" "CREATE TABLE public.blobs (id bigint PRIMARY KEY, payload bytea, payload_md5 text);
          INSERT INTO public.blobs
          SELECT g, p, md5(p)
            FROM (SELECT g, convert_to(repeat(md5(g::text), 1 + g % 7), 'UTF8') AS p
                    FROM generate_series(1, $BLOBS) g) s;
          UPDATE public.blobs SET payload_md5 = 'x' WHERE id IN ($PLANTED_CSV);
          CREATE TABLE public.soak_writes (id bigint PRIMARY KEY, port int NOT NULL,
                                           written_at timestamptz NOT NULL DEFAULT clock_timestamp());" >/dev/null ||
    die "seeding the primary failed"
echo "soak: public.blobs: $BLOBS rows, corruptions planted at id $PLANTED_CSV"

# ------------------------------------------------------------- config ----
CFG=$CLUSTER/soak.toml
CONFIG_N=0
# write_config STANDBY…: primary.dsn lists every server; [[replicas]] the standbys.
write_config() {
    local n tmp=$CFG.tmp
    CONFIG_N=$((CONFIG_N + 1))
    {
        echo "# scripts/soak.sh config #$CONFIG_N: replicas $*"
        echo "[primary]"
        echo "dsn = \"host=127.0.0.1,127.0.0.1,127.0.0.1 port=${PORT[primary]},${PORT[r1]},${PORT[r2]} user=postgres dbname=app\""
        for n in "$@"; do
            echo "[[replicas]]"
            echo "name = \"$n\""
            echo "dsn = \"host=127.0.0.1 port=${PORT[$n]} user=postgres dbname=app\""
        done
        cat <<EOF
[results]
dir = "$RESULTS_DIR"
[limits]
lease = "${LEASE}s"
[daemon]
leader_lease = "${LEASE}s"
[failover]
automatic = true
primary_down_after = "${DOWN_AFTER}s"
check_interval = "1s"
promote_timeout = "${PROMOTE_TIMEOUT}s"
follow_timeout = "${FOLLOW_TIMEOUT}s"

[[tasks]]
name = "blobs"
kind = "row_checksum"
table = 'public.blobs'
key = 'id'
content = 'payload'
checksum = 'payload_md5'
every = "3s"

[[tasks]]
name = "hold"
kind = "export"
query = "SELECT pg_sleep(1.5) AS slept"
every = "5s"
EOF
    } >"$tmp"
    cp "$tmp" "$OUT/configs/$CONFIG_N.toml"
    mv -f "$tmp" "$CFG"
}
write_config r1 r2
PGMAINT_CONFIG=$CFG "$BIN" init >"$OUT/init.log" 2>&1 || { cat "$OUT/init.log" >&2; die "pgmaint init failed"; }
caught_up() {
    local lsn=$1 n
    for n in r1 r2; do
        [[ $(QT=5 qc "${PORT[$n]}" "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn") == t ]] || return 1
    done
}
LSN=$(qc "$P0" "SELECT pg_current_wal_lsn()")
wait_until 60 caught_up "$LSN" || die "the replicas did not catch up with the seeded primary"

# The sampler's fingerprint of pgmaint's tables (one md5 per table).
FP_SQL=$(qc "$P0" "SELECT string_agg(format('%L || ''='' || (SELECT md5(coalesce(string_agg(x::text, ''|'' ORDER BY x::text), '''')) FROM pgmaint.%I x)', tablename, tablename), ' || '','' || ' ORDER BY tablename)
                     FROM pg_tables WHERE schemaname = 'pgmaint'")
[[ -n $FP_SQL ]] || die "no pgmaint tables after pgmaint init"
SAMPLE_SQL="SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE 'primary' END,
       CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE $TLI_SQL END,
       CASE WHEN pg_is_in_recovery() THEN replace(pg_get_wal_replay_pause_state(), ' ', '_') ELSE '-' END,
       coalesce((SELECT status || ':' || sender_port FROM pg_stat_wal_receiver), '-'),
       CASE WHEN pg_is_in_recovery() THEN '-' ELSE $FP_SQL END"

# ----------------------------------------------------- background: sampler ----
# Every second: each server's role, timeline, pause state, upstream, and (when out of
# recovery) a fingerprint of pgmaint's tables; the writer's target (the server out of
# recovery on the highest timeline) goes to ctl/target.
sampler() {
    set +e
    local t n r tgt best line prev=""
    while [[ ! -e $CTL/quit && ! -e $CTL/sampler-stop ]] && alive_main; do
        t=$EPOCHREALTIME
        for n in "${NODES[@]}"; do
            (QT=3 q "${PORT[$n]}" -F '|' -c "$SAMPLE_SQL" >"$CTL/s.$n" 2>/dev/null || : >"$CTL/s.$n") &
        done
        wait
        tgt="" best=0
        for n in "${NODES[@]}"; do
            r=$(<"$CTL/s.$n")
            if [[ -z $r ]]; then
                line="$t|$n|${PORT[$n]}|down||||"
            else
                line="$t|$n|${PORT[$n]}|$r"
                IFS='|' read -r st tl _ <<<"$r"
                if [[ $st == primary && $tl =~ ^[0-9]+$ ]]; then
                    if ((tl > best)) || { ((tl == best)) && [[ ${PORT[$n]} == "$prev" ]]; }; then
                        best=$tl
                        tgt=${PORT[$n]}
                    fi
                fi
            fi
            echo "$line" >>"$OUT/samples.csv"
        done
        prev=$tgt
        echo "$tgt" >"$CTL/target.tmp" && mv -f "$CTL/target.tmp" "$CTL/target"
        t=$(((${t/./} + 1000000 - ${EPOCHREALTIME/./}) / 1000))
        ((t > 0)) && sleep "$(printf '0.%03d' "$t")"
    done
}

# ------------------------------------------------------ background: writer ----
# INSERTs into public.soak_writes on the writer's target; each committed id is
# recorded with its server, timeline and the WAL insert position read after the commit.
writer() {
    set +e
    local id=0 port out rc lines
    while [[ ! -e $CTL/quit && ! -e $CTL/writers-stop ]] && alive_main; do
        port=$(cat "$CTL/target" 2>/dev/null)
        if [[ -z $port ]]; then
            sleep 0.3
            continue
        fi
        id=$((id + 1))
        out=$(QT=4 q "$port" -c "INSERT INTO public.soak_writes (id, port) VALUES ($id, $port) RETURNING $TLI_SQL" \
            -c "SELECT pg_current_wal_insert_lsn()" 2>>"$OUT/writer.err")
        rc=$?
        mapfile -t lines <<<"$out"
        if ((rc == 0)) && [[ ${#lines[@]} -eq 2 && ${lines[0]} =~ ^[0-9]+$ ]]; then
            echo "$port|${lines[0]}|$id|${lines[1]}|$EPOCHREALTIME" >>"$OUT/writes_ok.csv"
        elif [[ ${lines[0]:-} =~ ^[0-9]+$ ]]; then
            echo "$port|${lines[0]}|$id|$EPOCHREALTIME" >>"$OUT/writes_nolsn.csv"
        else
            echo "$port|$id|$EPOCHREALTIME" >>"$OUT/writes_failed.csv"
        fi
        sleep 0.2
    done
}

# -------------------------------------------------- background: daemons ----
# One supervisor per daemon slot (A, B), as a service manager. ctl/SLOT.want says
# whether the daemon should run: it is started (again 1 s after it dies, backing off up
# to 8 s when it dies young), or stopped with SIGTERM. ctl/SLOT.cmd holds "TOKEN
# CMD": kill (SIGKILL), restart (SIGTERM, then start again at once); the token is
# written to ctl/SLOT.ack once done. A SIGTERM is given TERM_BOUND s, then SIGKILL.
# ctl/SLOT.env holds extra environment for the next start only.
supervise() {
    set +e
    local slot=$1 pid="" inc=0 started=0 next=0 backoff=1 code cmd token log envs want
    start() {
        inc=$((inc + 1))
        log=$OUT/daemons/$slot.$inc.log
        envs=()
        if [[ -s $CTL/$slot.env ]]; then read -r -a envs <"$CTL/$slot.env"; fi
        rm -f "$CTL/$slot.env"
        env PGMAINT_CONFIG="$CFG" "${envs[@]}" "$BIN" daemon </dev/null >"$log" 2>&1 &
        pid=$!
        started=${EPOCHREALTIME/./}
        echo "$log" >"$CTL/$slot.log"
        echo "$pid" >"$CTL/$slot.pid"
        event "daemon $slot#$inc started (pid $pid, config #$(head -n1 "$CFG" | sed -E 's/.*#([0-9]+).*/\1/'))${envs[*]:+ with ${envs[*]}}"
    }
    reap() { # why
        local why=$1 ran
        wait "$pid" 2>/dev/null
        code=$?
        ran=$(((${EPOCHREALTIME/./} - started) / 1000000))
        if [[ $why == unexpected && -e $CTL/$slot.soakkill ]]; then why=soak-kill; fi
        if [[ $why == unexpected && $code == 137 ]] && grep -q 'PGMAINT_TEST_KILL_AT' "$log"; then
            why=knob-kill
            echo "$slot#$inc" >>"$CTL/promote_kills"
            event "daemon $slot#$inc (pid $pid) killed itself at a promotion step: $(grep 'PGMAINT_TEST_KILL_AT' "$log" | tail -n 1 | cut -c1-200)"
        fi
        rm -f "$CTL/$slot.soakkill"
        echo "$slot#$inc|$code|$why|$ran|$log" >>"$OUT/daemon_exits.csv"
        if [[ $why == unexpected ]]; then
            event "daemon $slot#$inc (pid $pid) exited by itself with code $code after ${ran}s: $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-220)"
        fi
        rm -f "$CTL/$slot.pid"
        pid=""
        if ((ran < 5)); then backoff=$((backoff * 2 > 8 ? 8 : backoff * 2)); else backoff=1; fi
        next=$((${EPOCHREALTIME/./} + backoff * 1000000))
    }
    term() {
        local t0=${EPOCHREALTIME/./} secs top
        kill -TERM "$pid" 2>/dev/null
        while kill -0 "$pid" 2>/dev/null && ((${EPOCHREALTIME/./} - t0 < TERM_BOUND * 1000000)); do sleep 0.1; done
        secs=$(((${EPOCHREALTIME/./} - t0) / 100000))
        secs="$((secs / 10)).$((secs % 10))"
        if kill -0 "$pid" 2>/dev/null; then
            top=$(sed -E 's/^[^ ]+ +//' "$log" | sort | uniq -c | sort -rn | head -n1 | sed -E 's/^ *//' | cut -c1-160)
            event "daemon $slot#$inc (pid $pid) still runs ${TERM_BOUND}s after SIGTERM: SIGKILL (its log: $(wc -l <"$log") lines, most repeated: $top)"
            echo "$slot#$inc|hung|$secs|$log|$top" >>"$OUT/term_results.csv"
            kill -KILL "$pid" 2>/dev/null
            reap term-hung
        else
            local ran=$(((t0 - started) / 100000))
            reap term
            echo "$slot#$inc|$code|$secs|$log||$((ran / 10)).$((ran % 10))" >>"$OUT/term_results.csv"
            event "daemon $slot#$inc stopped by SIGTERM in ${secs}s (exit $code)"
        fi
        next=0
    }
    while alive_main; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            reap unexpected
        fi
        if [[ -f $CTL/$slot.cmd ]] && mv -f "$CTL/$slot.cmd" "$CTL/$slot.cmd.taken" 2>/dev/null; then
            read -r token cmd <"$CTL/$slot.cmd.taken"
            rm -f "$CTL/$slot.cmd.taken"
            case $cmd in
                kill) if [[ -n $pid ]]; then kill -KILL "$pid" 2>/dev/null; reap kill; next=$((${EPOCHREALTIME/./} + 1000000)); fi ;;
                restart) [[ -n $pid ]] && term; next=0 ;;
            esac
            echo "$token" >"$CTL/$slot.ack"
        fi
        [[ -e $CTL/quit ]] && break
        want=$(cat "$CTL/$slot.want" 2>/dev/null)
        if [[ $want != run && -n $pid ]]; then
            term
        elif [[ $want == run && -z $pid ]] && ((${EPOCHREALTIME/./} >= next)); then
            start
        fi
        sleep 0.1
    done
    if [[ -n $pid ]]; then kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$CTL/$slot.pid"; fi
}

# daemon_cmd SLOT CMD [ENV] [WAIT]: hand CMD (kill, restart) to SLOT's supervisor
# (after any command still pending) and wait up to WAIT s (default: a SIGTERM's bound
# plus 10) until it is done; status 1 if it is not done by then.
CMD_TOKEN=0
daemon_cmd() {
    local slot=$1 cmd=$2 limit=${4:-$((TERM_BOUND + 10))}
    wait_until $((TERM_BOUND + 10)) test ! -e "$CTL/$slot.cmd" || return 1
    CMD_TOKEN=$((CMD_TOKEN + 1))
    [[ -n ${3:-} ]] && echo "$3" >"$CTL/$slot.env"
    echo "$CMD_TOKEN $cmd" >"$CTL/$slot.cmd.tmp" && mv -f "$CTL/$slot.cmd.tmp" "$CTL/$slot.cmd"
    LAST_TOKEN[$slot]=$CMD_TOKEN
    ((limit > 0)) || return 0
    wait_until "$limit" cmd_done "$slot"
}
declare -A LAST_TOKEN=()
cmd_done() { [[ $(cat "$CTL/$1.ack" 2>/dev/null) == "${LAST_TOKEN[$1]}" ]]; }
daemon_runs() { [[ -s $CTL/$1.pid ]]; }
slot_wanted() { [[ $(cat "$CTL/$1.want" 2>/dev/null) == run ]]; }
# restart_daemons [ENV]: restart every wanted daemon at once (an operator's restart);
# wait up to 10 s for them to run again. One that does not stop on SIGTERM holds only
# its own slot: its supervisor kills it TERM_BOUND s later and starts it again.
restart_daemons() {
    local s slots=()
    for s in A B; do
        if slot_wanted "$s"; then
            daemon_cmd "$s" restart "${1:-}" 0
            slots+=("$s")
        fi
    done
    all_restarted() { local s; for s in "${slots[@]}"; do cmd_done "$s" && daemon_runs "$s" || return 1; done; }
    wait_until 10 all_restarted || event "daemon(s) not restarted within 10s (a SIGTERM still pending?): going on"
    LAST_RESTART=${EPOCHREALTIME}
}

# ------------------------------------------------- promotion-step kills ----
# Without the PGMAINT_TEST_KILL_AT knob: kill -9 a daemon as soon as its log shows a
# new `SELECT pg_promote` (polled every 50 ms).
WATCH_PIDS=()
watch_promote() {
    set +e
    local slot=$1 pid log base n limit=$((${EPOCHREALTIME/./} + 90000000))
    pid=$(cat "$CTL/$slot.pid" 2>/dev/null) || return 0
    log=$(<"$CTL/$slot.log")
    base=$(grep -c 'SELECT pg_promote' "$log")
    while [[ ! -e $CTL/disarm && ! -e $CTL/quit ]] && kill -0 "$pid" 2>/dev/null && ((${EPOCHREALTIME/./} < limit)); do
        n=$(grep -c 'SELECT pg_promote' "$log")
        if ((n > base)); then
            : >"$CTL/$slot.soakkill"
            kill -KILL "$pid" 2>/dev/null &&
                event "fault: kill -9 daemon $slot (pid $pid) right after it logged: $(grep 'SELECT pg_promote' "$log" | tail -n1 | cut -c1-160)"
            echo "$slot" >>"$CTL/promote_kills"
            return 0
        fi
        sleep 0.05
    done
}
arm_promote_kill() { # step
    local s
    if ((KNOB)); then
        restart_daemons "PGMAINT_TEST_KILL_AT=$1"
    else
        rm -f "$CTL/disarm"
        WATCH_PIDS=()
        for s in A B; do
            if slot_wanted "$s"; then
                watch_promote "$s" &
                WATCH_PIDS+=($!)
                BG_PIDS+=($!)
            fi
        done
    fi
}
disarm_promote_kill() {
    local p
    : >"$CTL/disarm"
    for p in "${WATCH_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    WATCH_PIDS=()
}

# ------------------------------------------------------- topology ----
# The primary the soak believes in (PRI, on timeline PRI_TLI).
PRI=primary
PRI_TLI=1

# dump_superseded NODE: keep a superseded (former) primary's pgmaint rows before it is
# rejoined: a pg_dump of schema pgmaint, every timestamptz value of every pgmaint table
# (sup_ts.csv), its task_slots and upload_tasks.
dump_superseded() {
    local node=$1 port=${PORT[$1]} tli stamp sql
    tli=$(QT=10 qc "$port" "SELECT $TLI_SQL") || { event "could not read $node before its rejoin"; return 0; }
    stamp=$(date +%H%M%S)
    "$PG_BIN/pg_dump" -h 127.0.0.1 -p "$port" -U postgres -d app -n pgmaint -a \
        -f "$OUT/superseded/$node-tl$tli-$stamp.sql" 2>>"$OUT/superseded/errors.log" || true
    sql=$(QT=10 qc "$port" "SELECT string_agg(format('SELECT %L, %s, %L, %L, extract(epoch FROM x.%I)::float8, row_to_json(x)::text FROM pgmaint.%I x WHERE x.%I IS NOT NULL',
                                  '$node', $tli, table_name, column_name, column_name, table_name, column_name), ' UNION ALL ')
                              FROM information_schema.columns
                             WHERE table_schema = 'pgmaint' AND data_type = 'timestamp with time zone'
                               AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = 'pgmaint')")
    [[ -n $sql ]] && QT=20 qc "$port" "COPY ($sql) TO STDOUT (FORMAT csv)" >>"$OUT/sup_ts.csv"
    QT=20 qc "$port" "COPY (SELECT '$node', $tli, task_name, slot, claimed_by, claimed_at, run_id FROM pgmaint.task_slots) TO STDOUT (FORMAT csv)" >>"$OUT/sup_slots.csv"
    QT=20 qc "$port" "COPY (SELECT '$node', $tli, id, run_id, task_name, state, finished_at FROM pgmaint.upload_tasks) TO STDOUT (FORMAT csv)" >>"$OUT/sup_uploads.csv"
    echo "$node|$port|$tli|$EPOCHREALTIME|${BACK_AT:-}" >>"$OUT/superseded.csv"
    event "kept $node's pgmaint rows (timeline $tli) before its rejoin: superseded/$node-tl$tli-$stamp.sql"
}

# rejoin NODE NEW: NODE (a former primary, or a standby that cannot follow) becomes a
# standby of NEW: pg_rewind (it runs crash recovery itself), else a fresh
# pg_basebackup; its own port/name settings and slot kept.
REJOIN_N=0
rejoin() {
    local node=$1 new=$2 dir=$DATA/$1 newport=${PORT[$2]} rlog how
    REJOIN_N=$((REJOIN_N + 1))
    rlog=$OUT/rejoin/$REJOIN_N-$node.log
    if running "$node"; then
        if [[ $(QT=5 qc "${PORT[$node]}" "SELECT pg_is_in_recovery()" 2>/dev/null) == f ]]; then
            dump_superseded "$node"
        fi
        pg_stop "$node" fast || pm_stop "$dir" fast
    fi
    cp "$dir/pgmaint-local.conf" "$CTL/$node-local.conf"
    # pg_rewind reads the source's timeline from its control file, which a promoted
    # server updates only at its first checkpoint (a spread one, minutes later): without
    # this CHECKPOINT pg_rewind sees one timeline and says "no rewind required".
    QT=60 qc "$newport" "CHECKPOINT" >/dev/null || event "CHECKPOINT on $new failed"
    if run_pg "$PG_BIN/pg_rewind" --target-pgdata="$dir" \
        --source-server="host=127.0.0.1 port=$newport user=postgres dbname=postgres" >"$rlog" 2>&1; then
        how="pg_rewind ($(grep -oE 'no rewind required|Done!' "$rlog" | tail -n1))"
        count rejoin_rewind
    else
        event "pg_rewind of $node failed ($(tail -n1 "$rlog" | cut -c1-160)); a fresh copy with pg_basebackup"
        reclone "$node" "$new" "$rlog"
        how="pg_basebackup"
    fi
    standby_setup "$node" "$new"
    if wait_until 30 streams_from "$node" "$newport"; then
        event "$node rejoined as a standby of $new by $how"
        return 0
    fi
    event "$node rejoined by $how but does not stream from $new after 30s ($(grep -E 'FATAL|ERROR' "$DATA/$node.log" | tail -n1 | cut -c1-200)): a fresh copy with pg_basebackup"
    pg_stop "$node" immediate || pm_stop "$dir" immediate
    reclone "$node" "$new" "$rlog"
    standby_setup "$node" "$new"
    if wait_until 30 streams_from "$node" "$newport"; then
        event "$node rejoined as a standby of $new by pg_basebackup"
    else
        event "$node does not stream from $new after a fresh pg_basebackup either"
    fi
}

# reclone NODE NEW LOG: NODE's data directory replaced by a pg_basebackup of NEW.
reclone() {
    local node=$1 new=$2 dir=$DATA/$1
    run_pg find "$dir" -mindepth 1 -delete
    run_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "${PORT[$new]}" -U postgres -D "$dir" -X stream -c fast >>"$3" 2>&1 ||
        die "pg_basebackup of $node from $new failed (see $3)"
    count rejoin_basebackup
}

# standby_setup NODE NEW: NODE's own settings back (port, name: a rewind or a base
# backup copies NEW's), following NEW through slot NODE, then started.
standby_setup() {
    local node=$1 new=$2 dir=$DATA/$1 newport=${PORT[$2]}
    write_pg_file "$dir/pgmaint-local.conf" <"$CTL/$node-local.conf"
    run_pg sed -i -E '/^[[:space:]]*(primary_conninfo|primary_slot_name)[[:space:]]*=/d' "$dir/postgresql.auto.conf"
    printf "primary_conninfo = 'host=127.0.0.1 port=%s user=postgres application_name=%s'\nprimary_slot_name = '%s'\n" \
        "$newport" "$node" "$node" | run_pg tee -a "$dir/postgresql.auto.conf" >/dev/null
    run_pg touch "$dir/standby.signal"
    run_pg rm -f "$dir/postmaster.pid"
    qc "$newport" "SELECT pg_create_physical_replication_slot('$node') WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '$node')" >/dev/null ||
        event "could not create slot $node on $new"
    pg_start "$node" || event "$node did not start as a standby of $new: $(grep -E 'FATAL|ERROR' "$DATA/$node.log" | tail -n1 | cut -c1-200)"
}

# repoint NODE NEW: what pgmaint's followers step does, when it did not.
repoint() {
    local node=$1 new=$2 slot
    slot=$(QT=5 qc "${PORT[$node]}" "SHOW primary_slot_name" 2>/dev/null) || slot=""
    [[ -n $slot ]] && qc "${PORT[$new]}" "SELECT pg_create_physical_replication_slot('$slot') WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '$slot')" >/dev/null
    QT=5 qc "${PORT[$node]}" "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=${PORT[$new]} user=postgres application_name=$node'" >/dev/null &&
        QT=5 qc "${PORT[$node]}" "SELECT pg_reload_conf()" >/dev/null
}

standbys() {
    local n out=()
    for n in "${NODES[@]}"; do
        [[ $(QT=5 qc "${PORT[$n]}" "SELECT pg_is_in_recovery()" 2>/dev/null) == t ]] && out+=("$n")
    done
    echo "${out[*]}"
}

# after_failover OLD NEW RETURN: the followers follow NEW (the soak re-points them if
# the daemons did not), the daemons maybe restarted at once, OLD maybe brought back
# unrejoined for a while (RETURN=1), then OLD rejoined, the config rewritten with the
# two standbys and the daemons restarted (an operator's actions).
after_failover() {
    local old=$1 new=$2 ret=$3 n hold
    for n in "${NODES[@]}"; do
        [[ $n == "$old" || $n == "$new" ]] && continue
        running "$n" || continue
        if wait_until $((FOLLOW_TIMEOUT + 10)) streams_from "$n" "${PORT[$new]}"; then
            event "$n streams from the new primary $new"
        else
            event "$n does not stream from $new $((FOLLOW_TIMEOUT + 10))s after the promotion: the soak re-points it (an operator would)"
            count repointed_by_soak
            repoint "$n" "$new"
            if ! wait_until 20 streams_from "$n" "${PORT[$new]}"; then
                event "$n still does not stream from $new: rejoining it"
                rejoin "$n" "$new"
            fi
        fi
    done
    # Half the time (never before an old primary's return: the daemons that lived
    # through the failover are the ones to face it) the operator restarts the daemons
    # at once.
    rand 2
    if ((R == 0 && !ret)); then
        write_config $(standbys)
        event "operator: config #$CONFIG_N (replicas: $(standbys)); restarting the daemons right after the failover"
        restart_daemons
    fi
    if ((ret)); then
        if pg_start "$old"; then
            BACK_AT=$EPOCHREALTIME
            current_primary
            rand 7
            hold=$((8 + R))
            count old_primary_returned
            event "fault: the old primary $old is back, not rejoined (servers out of recovery:$CP_ALL); left running ${hold}s"
            pause_for "$hold"
        else
            event "the old primary $old did not start as it was (see its log)"
        fi
    fi
    rejoin "$old" "$new"
    BACK_AT=""
    write_config $(standbys)
    event "operator: config #$CONFIG_N (replicas: $(standbys)); restarting the daemons"
    restart_daemons
}

# check_topology: after a fault that should not fail over, see whether one happened
# anyway (a slow restart): if so, carry it through like a planned one.
check_topology() {
    current_primary
    if [[ -n $CP_NODE && $CP_NODE != "$PRI" && $CP_TLI -gt $PRI_TLI ]]; then
        event "a failover followed: $CP_NODE is the primary on timeline $CP_TLI (was $PRI on $PRI_TLI)"
        echo "$EPOCHREALTIME|$PRI|$CP_NODE|$PRI_TLI|$CP_TLI|unplanned" >>"$OUT/observed_failovers.csv"
        count failovers
        local old=$PRI
        PRI=$CP_NODE
        PRI_TLI=$CP_TLI
        after_failover "$old" "$PRI" 0
    fi
}

# ensure_healthy: every server runs, and the standbys stream from PRI (bounded).
ensure_healthy() {
    local n
    for n in "${NODES[@]}"; do
        if ! running "$n"; then
            event "$n is not running: starting it"
            pg_start "$n" || event "$n did not start"
        fi
    done
    for n in "${NODES[@]}"; do
        [[ $n == "$PRI" ]] && continue
        wait_until 20 streams_from "$n" "${PORT[$PRI]}" || event "$n does not stream from $PRI"
    done
}

# --------------------------------------------------------------- faults ----
fault_daemon_kill() {
    local slots=(A) slot pid
    slot_wanted B && slots+=(B)
    rand ${#slots[@]}
    slot=${slots[$R]}
    pid=$(cat "$CTL/$slot.pid" 2>/dev/null) || { event "daemon $slot is not running (nothing to kill)"; return 0; }
    count daemon_kill
    event "fault: kill -9 daemon $slot (pid $pid)"
    daemon_cmd "$slot" kill "" 10 || event "daemon $slot: the kill is still pending"
}

fault_replica_restart() {
    local sb=() node mode
    read -r -a sb <<<"$(standbys)"
    ((${#sb[@]})) || { event "no standby to restart"; return 0; }
    rand ${#sb[@]}
    node=${sb[$R]}
    rand 2
    mode=$([[ $R == 0 ]] && echo fast || echo immediate)
    count replica_restart
    event "fault: replica restart: cluster.sh restart $node --mode $mode (port ${PORT[$node]}, paused: $(QT=5 qc "${PORT[$node]}" "SELECT pg_get_wal_replay_pause_state()" 2>/dev/null))"
    if ! bash "$SCRIPT_DIR/cluster.sh" restart "$node" --dir "$CLUSTER" --mode "$mode" >>"$OUT/cluster-ops.log" 2>&1; then
        event "cluster.sh restart $node failed (see cluster-ops.log)"
    fi
    wait_until 30 streams_from "$node" "${PORT[$PRI]}" || event "$node does not stream from $PRI after its restart"
}

fault_primary_restart() {
    count primary_restart
    event "fault: primary restart: pg_ctl restart -m fast of $PRI (port ${PORT[$PRI]})"
    run_pg "$PG_BIN/pg_ctl" -D "$DATA/$PRI" -m fast -w -t 60 -l "$DATA/$PRI.log" restart >/dev/null 2>&1 ||
        event "pg_ctl restart of $PRI failed"
    check_topology
}

fault_primary_stop() {
    local pm ms
    pm=$(pm_pid "$DATA/$PRI") || { event "$PRI is not running"; return 0; }
    rand 1501
    ms=$((1000 + R)) # 1.0–2.5 s, under primary_down_after
    count primary_sigstop
    event "fault: SIGSTOP of $PRI's postmaster (pid $pm) and its children for ${ms}ms (primary_down_after ${DOWN_AFTER}s)"
    STOPPED_PM=$pm
    pkill -STOP -P "$pm" || true
    kill -STOP "$pm"
    pause_for "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
    kill -CONT "$pm"
    pkill -CONT -P "$pm" || true
    STOPPED_PM=""
    event "SIGCONT sent to $PRI"
    pause_for 2
    check_topology
}

# fault_failover VARIANT: kill the primary (pg_ctl stop -m immediate); VARIANT plain,
# return (the old primary comes back unrejoined for a while) or kill:STEP (a daemon
# killed at that promotion step).
fault_failover() {
    local variant=$1 old=$PRI old_tli=$PRI_TLI t0 secs ret=0 step=""
    [[ $variant == return ]] && ret=1
    if [[ $variant == kill:* ]]; then
        step=${variant#kill:}
        arm_promote_kill "$step"
        count "promotion_kill_armed"
    fi
    count primary_kill
    event "fault: primary killed: cluster.sh stop $old --mode immediate (port ${PORT[$old]}, timeline $old_tli)${step:+; a daemon is to die at promotion step '$step'}"
    bash "$SCRIPT_DIR/cluster.sh" stop "$old" --dir "$CLUSTER" --mode immediate >>"$OUT/cluster-ops.log" 2>&1 ||
        event "cluster.sh stop $old failed"
    t0=${EPOCHREALTIME/./}
    new_primary_seen() { current_primary; [[ -n $CP_NODE && $CP_NODE != "$old" && $CP_TLI -gt $old_tli ]]; }
    if wait_until $((DOWN_AFTER + PROMOTE_TIMEOUT + 30)) new_primary_seen; then
        secs=$(((${EPOCHREALTIME/./} - t0) / 100000))
        secs="$((secs / 10)).$((secs % 10))"
        [[ -n $step ]] && { ((KNOB)) || disarm_promote_kill; }
        event "failover: $CP_NODE is the primary on timeline $CP_TLI, ${secs}s after the kill (out of recovery:$CP_ALL)"
        echo "$EPOCHREALTIME|$old|$CP_NODE|$old_tli|$CP_TLI|$variant" >>"$OUT/observed_failovers.csv"
        count failovers
        PRI=$CP_NODE
        PRI_TLI=$CP_TLI
        after_failover "$old" "$PRI" "$ret"
    else
        [[ -n $step ]] && { ((KNOB)) || disarm_promote_kill; }
        count no_failover
        echo "no failover within $((DOWN_AFTER + PROMOTE_TIMEOUT + 30))s after $old (timeline $old_tli) was killed ($variant)" >>"$OUT/violations_runtime.txt"
        event "no failover $((DOWN_AFTER + PROMOTE_TIMEOUT + 30))s after the primary was killed: restarting $old as it was"
        pg_start "$old" || die "$old did not start again"
        check_topology
        restart_daemons
    fi
}

# ------------------------------------------------------------------ run ----
# From here on a failing command is handled where it matters (faults are expected to
# fail things); an unexpected way out is exit 2 (see cleanup).
set +e
for s in A B; do echo run >"$CTL/$s.want"; done
sampler 2>>"$OUT/sampler.err" &
BG_PIDS+=($!)
SAMPLER_PID=$!
writer 2>>"$OUT/writer.err" &
BG_PIDS+=($!)
WRITER_PID=$!
supervise A 2>>"$OUT/supervisor.err" &
BG_PIDS+=($!)
SUP_A=$!
supervise B 2>>"$OUT/supervisor.err" &
BG_PIDS+=($!)
SUP_B=$!
LAST_RESTART=$EPOCHREALTIME
wait_until 15 daemon_runs A && wait_until 15 daemon_runs B || die "the daemons did not start"
event "soak started: ${DURATION}s, two daemons (A, B) until $((DURATION / 2))s, then A alone; faults until $((DURATION - SETTLE))s"

# The first faults go through every kind once (shuffled), then kinds are drawn at random.
KINDS=(daemon_kill replica_restart primary_restart primary_stop failover:plain failover:return failover:kill)
DECK=("${KINDS[@]}")
for ((i = ${#DECK[@]} - 1; i > 0; i--)); do
    rand $((i + 1))
    tmp=${DECK[$i]}
    DECK[$i]=${DECK[$R]}
    DECK[$R]=$tmp
done
# The first failover of the deck is the one whose old primary comes back: it meets
# the two daemons of the first half.
for ((i = 0; i < ${#DECK[@]}; i++)); do
    if [[ ${DECK[$i]} == failover:* ]]; then
        for ((j = i; j < ${#DECK[@]}; j++)); do
            if [[ ${DECK[$j]} == failover:return ]]; then
                DECK[$j]=${DECK[$i]}
                DECK[$i]=failover:return
                break
            fi
        done
        break
    fi
done
STEPS=(intent repointed pg_promote promoted recorded followers)
STEPS_USED=""
STEP_I=0
rand 4
STEP_I=$R
FAULT_END=$((DURATION - SETTLE))
CYCLES=0
B_STOPPED=0
maybe_stop_b() {
    elapsed
    if ((!B_STOPPED && EL >= DURATION / 2)); then
        B_STOPPED=1
        echo stop >"$CTL/B.want"
        event "half time: daemon B gets SIGTERM; daemon A goes on alone"
    fi
}

while :; do
    maybe_stop_b
    rand 2500
    pause_for "$(printf '%d.%03d' $(((1500 + R) / 1000)) $(((1500 + R) % 1000)))"
    maybe_stop_b
    elapsed
    ((EL < FAULT_END)) || break
    ensure_healthy
    if ((${#DECK[@]})); then
        kind=${DECK[0]}
        DECK=("${DECK[@]:1}")
    else
        rand 10
        case $R in
            0 | 1) kind=daemon_kill ;;
            2 | 3) kind=replica_restart ;;
            4) kind=primary_restart ;;
            5) kind=primary_stop ;;
            6) kind=failover:plain ;;
            7) kind=failover:return ;;
            *) kind=failover:kill ;;
        esac
    fi
    if [[ $kind == failover:* ]] && ((FAULT_END - EL < FAILOVER_ROOM)); then
        rand 4
        kind=$(echo daemon_kill replica_restart primary_restart primary_stop | cut -d' ' -f$((R + 1)))
    fi
    CYCLES=$((CYCLES + 1))
    case $kind in
        daemon_kill) fault_daemon_kill ;;
        replica_restart) fault_replica_restart ;;
        primary_restart) fault_primary_restart ;;
        primary_stop) fault_primary_stop ;;
        failover:plain) fault_failover plain ;;
        failover:return) fault_failover return ;;
        failover:kill)
            if ((KNOB)); then
                step=${STEPS[$((STEP_I % ${#STEPS[@]}))]}
                STEP_I=$((STEP_I + 1))
                STEPS_USED+="${STEPS_USED:+,}$step"
            else
                step=promoted
            fi
            fault_failover "kill:$step"
            ;;
    esac
done

# --------------------------------------------------------------- settle ----
event "fault window over after $CYCLES fault cycles; settling"
ensure_healthy
# Wait (until the end of the run, at least 15 s) for a findings upload of a blobs run
# that started after the daemons' last restart.
LR=$LAST_RESTART
fresh_findings() {
    [[ $(QT=5 qc "${PORT[$PRI]}" "SELECT count(*) FROM pgmaint.upload_tasks u JOIN pgmaint.runs r ON r.id = u.run_id
                                   WHERE u.task_name = 'blobs' AND u.state = 'completed' AND r.state = 'succeeded'
                                     AND r.started_at > to_timestamp($LR)" 2>/dev/null) =~ ^[1-9] ]]
}
elapsed
left=$((DURATION - EL))
((left < 15)) && left=15
PROGRESS_WAIT=$left
if wait_until "$left" fresh_findings; then
    PROGRESS=1
    event "a blobs run since the last restart is uploaded on $PRI"
else
    PROGRESS=0
    event "no blobs run since the last daemon restart was uploaded on $PRI within ${left}s"
fi
elapsed
((EL < DURATION)) && pause_for $((DURATION - EL))

# ----------------------------------------------------------------- stop ----
event "stopping: writer, then the daemons (SIGTERM, up to ${TERM_BOUND}s each), then the sampler"
: >"$CTL/writers-stop"
wait "$WRITER_PID" 2>/dev/null || true
maybe_stop_b
for s in A B; do echo stop >"$CTL/$s.want"; done
daemons_gone() { [[ ! -e $CTL/A.pid && ! -e $CTL/B.pid && ! -e $CTL/A.cmd && ! -e $CTL/B.cmd ]]; }
wait_until $((TERM_BOUND + 10)) daemons_gone || warn "the daemons are not gone"
pause_for 1.5
: >"$CTL/sampler-stop"
wait "$SAMPLER_PID" 2>/dev/null || true
: >"$CTL/quit"
wait "$SUP_A" "$SUP_B" 2>/dev/null || true

# --------------------------------------------------------------- checks ----
current_primary
FINAL=$CP_NODE
[[ -n $FINAL ]] || die "no primary at the end (servers out of recovery:$CP_ALL)"
[[ $FINAL == "$PRI" ]] || event "the final primary is $FINAL, the soak thought $PRI"
echo
echo "=== invariants (final primary: $FINAL, port ${PORT[$FINAL]}, timeline $CP_TLI) ==="
REPORT=$OUT/report.txt
: >"$REPORT"
say() { echo "$*" | tee -a "$REPORT"; }

# 1. No replica paused.
bad=()
info=()
for n in "${NODES[@]}"; do
    [[ $n == "$FINAL" ]] && continue
    st=$(QT=5 qc "${PORT[$n]}" "SELECT CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() ELSE 'not in recovery' END" 2>/dev/null) ||
        st="unreachable"
    info+=("$n: $st")
    [[ $st == "not paused" ]] || bad+=("$n: $st")
done
if ((${#bad[@]})); then
    say "VIOLATION no-replica-paused: ${bad[*]}"
    QT=5 qc "${PORT[$FINAL]}" "SELECT 'run ' || id || ' on ' || replica || ': ' || state || coalesce(' (' || error || ')', '') FROM pgmaint.runs ORDER BY id DESC LIMIT 3" 2>/dev/null |
        sed 's/^/    last runs: /' | tee -a "$REPORT"
else
    say "ok        no-replica-paused: $(IFS=';'; echo "${info[*]}")"
fi

# 2–8. The database-side invariants (scripts/lib/soak-checks.sql).
cat >"$OUT/analysis.sql" <<EOF
\\set ON_ERROR_STOP 1
\\set planted '{$PLANTED_CSV}'
\\set lease $LEASE
\\set uploader_lease $UPLOADER_LEASE
CREATE TEMP TABLE samples (t float8, node text, port int, state text, tli int, pause text, sender text, fp text);
\\copy samples FROM '$OUT/samples.csv' (FORMAT csv, DELIMITER '|', NULL '')
CREATE TEMP TABLE w (port int, tli int, id bigint, lsn pg_lsn, t float8);
\\copy w FROM '$OUT/writes_ok.csv' (FORMAT csv, DELIMITER '|')
CREATE TEMP TABLE wn (port int, tli int, id bigint, t float8);
\\copy wn FROM '$OUT/writes_nolsn.csv' (FORMAT csv, DELIMITER '|')
CREATE TEMP TABLE sup (node text, port int, tli int, dumped_at float8, back_at float8);
\\copy sup FROM '$OUT/superseded.csv' (FORMAT csv, DELIMITER '|', NULL '')
CREATE TEMP TABLE sup_ts (node text, tli int, tbl text, col text, ts float8, row_text text);
\\copy sup_ts FROM '$OUT/sup_ts.csv' (FORMAT csv)
CREATE TEMP TABLE sup_slots (node text, tli int, task_name text, slot timestamptz, claimed_by text, claimed_at timestamptz, run_id bigint);
\\copy sup_slots FROM '$OUT/sup_slots.csv' (FORMAT csv)
CREATE TEMP TABLE sup_uploads (node text, tli int, id bigint, run_id bigint, task_name text, state text, finished_at timestamptz);
\\copy sup_uploads FROM '$OUT/sup_uploads.csv' (FORMAT csv)
\\i $SCRIPT_DIR/lib/soak-checks.sql
EOF
if ! QT=120 q "${PORT[$FINAL]}" -f "$OUT/analysis.sql" >"$OUT/analysis.out" 2>"$OUT/analysis.err"; then
    cat "$OUT/analysis.out" "$OUT/analysis.err" >&2
    die "the analysis queries failed (see $OUT/analysis.sql)"
fi
tee -a "$REPORT" <"$OUT/analysis.out"

# 9. Daemons stop on SIGTERM (exit 0 within TERM_BOUND s). A daemon that gets it
# within 1 s of its start may die of it (exit 143) before it handles signals: noted,
# not counted (nothing was under way).
bad=$(awk -F'|' '$2 != "0" && !($2 == "143" && $6 + 0 < 1)' "$OUT/term_results.csv")
early=$(awk -F'|' '$2 == "143" && $6 + 0 < 1 { printf "%s%s (%ss after its start)", sep, $1, $6; sep = ", " }' "$OUT/term_results.csv")
nterm=$(wc -l <"$OUT/term_results.csv")
if [[ -n $bad ]]; then
    say "VIOLATION daemons-stop-on-sigterm: $(grep -c . <<<"$bad") of $nterm SIGTERMs did not end the daemon with exit 0 within ${TERM_BOUND}s"
    while IFS='|' read -r who code secs dlog top _; do
        say "    daemon $who: $([[ $code == hung ]] && echo "still running after ${secs}s (SIGKILLed); its log $dlog has $(wc -l <"$dlog") lines, most repeated: $top" || echo "exit $code after ${secs}s"); last lines:"
        grep -v '^\s*$' "$dlog" | tail -n 3 | cut -c1-240 | sed 's/^/        /' | tee -a "$REPORT"
    done <<<"$bad"
else
    say "ok        daemons-stop-on-sigterm: $nterm SIGTERMs, each ended its daemon with exit 0 within ${TERM_BOUND}s${early:+ (killed by it before handling signals, just started: $early)}"
fi

# 10. Scheduling goes on: a blobs run started after the daemons' last restart (the
# last topology change) succeeded and was uploaded within the fault-free end.
if ((PROGRESS)); then
    say "ok        scheduling-progress: a blobs run started after the daemons' last restart (at $(date -d "@$LR" +%T)) succeeded and was uploaded"
else
    say "VIOLATION scheduling-progress: no blobs run started after the daemons' last restart (at $(date -d "@$LR" +%T)) was uploaded within the ${PROGRESS_WAIT}s of fault-free end; last slots:"
    QT=5 qc "${PORT[$FINAL]}" "SELECT task_name || ' ' || slot || ' claimed ' || claimed_at || ' by ' || claimed_by || ': ' || coalesce(result, 'unfinished') || coalesce(' (' || left(error, 160) || ')', '')
                                 FROM pgmaint.task_slots ORDER BY claimed_at DESC LIMIT 3" 2>/dev/null | sed 's/^/    /' | tee -a "$REPORT"
    for s in A B; do
        f=$(ls -t "$OUT"/daemons/$s.*.log 2>/dev/null | head -n1)
        [[ -n $f ]] || continue
        say "    daemon log $f, most repeated: $(sed -E 's/^[^ ]+ +//' "$f" | sort | uniq -c | sort -rn | head -n1 | sed -E 's/^ *//' | cut -c1-220)"
    done
fi

# 11. Every primary loss was failed over.
if [[ -s $OUT/violations_runtime.txt ]]; then
    say "VIOLATION failover-liveness: $(wc -l <"$OUT/violations_runtime.txt") primary loss(es) not failed over"
    sed 's/^/    /' "$OUT/violations_runtime.txt" | tee -a "$REPORT"
else
    say "ok        failover-liveness: every killed primary was failed over (${COUNT[failovers]:-0} failovers)"
fi

# --------------------------------------------------------------- summary ----
VIOLATIONS=$(grep -c '^VIOLATION' "$REPORT" || true)
exits=$(awk -F'|' '$3 == "unexpected"' "$OUT/daemon_exits.csv" | wc -l)
starts=$(ls "$OUT/daemons" | wc -l)
acked=$(wc -l <"$OUT/writes_ok.csv")
nolsn=$(wc -l <"$OUT/writes_nolsn.csv")
failedw=$(wc -l <"$OUT/writes_failed.csv")
runs=$(QT=10 qc "${PORT[$FINAL]}" "SELECT coalesce(string_agg(state || ' ' || n, ', ' ORDER BY state), 'none') FROM (SELECT state, count(*) n FROM pgmaint.runs GROUP BY state) s" 2>/dev/null || echo '?')
slots=$(QT=10 qc "${PORT[$FINAL]}" "SELECT coalesce(string_agg(coalesce(result, 'unfinished') || ' ' || n, ', '), 'none') FROM (SELECT result, count(*) n FROM pgmaint.task_slots GROUP BY result) s" 2>/dev/null || echo '?')
elapsed
echo
echo "=== summary (seed $SEED, ${DURATION}s soak, ${EL}s since the cluster was up) ==="
echo "fault cycles: $CYCLES"
echo "faults: daemon kill -9 ${COUNT[daemon_kill]:-0}, kill at a promotion step: armed ${COUNT[promotion_kill_armed]:-0} time(s), daemons killed $(cat "$CTL/promote_kills" 2>/dev/null | wc -l)$( ((KNOB)) && echo " (PGMAINT_TEST_KILL_AT, steps ${STEPS_USED:-none})" || echo ' (approximated: kill -9 right after SELECT pg_promote)'), replica restart ${COUNT[replica_restart]:-0}, primary restart ${COUNT[primary_restart]:-0}, primary SIGSTOP ${COUNT[primary_sigstop]:-0}, primary killed ${COUNT[primary_kill]:-0}, old primary back unrejoined ${COUNT[old_primary_returned]:-0}"
echo "failovers: ${COUNT[failovers]:-0} (none after a kill: ${COUNT[no_failover]:-0}); rejoins: pg_rewind ${COUNT[rejoin_rewind]:-0}, pg_basebackup ${COUNT[rejoin_basebackup]:-0}; followers re-pointed by the soak: ${COUNT[repointed_by_soak]:-0}"
echo "daemons: $starts started, $exits exited by themselves (see daemon_exits.csv)"
echo "pgmaint on the final primary: runs $runs; task slots $slots"
echo "writer: $acked writes acknowledged with their LSN, $nolsn without, $failedw failed"
echo "violations: $VIOLATIONS"
echo "output: $OUT (events.log, report.txt, daemons/, samples.csv, superseded/, server-logs/)"
REPORTED=1
((VIOLATIONS == 0)) || exit 1
exit 0
