# shellcheck shell=bash
# Helpers for scripts/cluster.sh: locating PostgreSQL, running server tools as
# the right user, picking free ports, and inspecting/stopping postmasters.
#
# This file is sourced; it defines functions and a few globals only.
#   PG_BIN   directory holding initdb/pg_ctl/postgres/pg_basebackup
#   PSQL     psql binary used for client queries (runs as the invoking user)
#   RUN_AS   user that owns and runs the servers (postgres when invoked as root)

log() { printf 'cluster.sh: %s\n' "$*" >&2; }
warn() { printf 'cluster.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'cluster.sh: error: %s\n' "$*" >&2
    exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# Decide which OS user runs the servers; create `postgres` when root needs it.
pg_setup_run_as() {
    if is_root; then
        RUN_AS=postgres
        if ! id -u postgres >/dev/null 2>&1; then
            log "creating system user postgres"
            useradd --system --user-group --home-dir /var/lib/postgresql \
                --shell /bin/bash postgres ||
                die "could not create the postgres system user"
        fi
        command -v runuser >/dev/null 2>&1 || die "runuser (util-linux) is required when running as root"
    else
        RUN_AS=$(id -un)
    fi
}

# Run a PostgreSQL server-side tool as RUN_AS.
run_pg() {
    if is_root; then
        runuser -u "$RUN_AS" -- "$@"
    else
        "$@"
    fi
}

# Can RUN_AS traverse (and optionally write) a directory?
run_as_can_access() { # dir [w]
    local dir=$1 mode=${2:-}
    if ! is_root; then
        [[ -x $dir ]] && { [[ -z $mode ]] || [[ -w $dir ]]; }
        return
    fi
    if [[ -n $mode ]]; then
        runuser -u "$RUN_AS" -- test -x "$dir" -a -w "$dir" 2>/dev/null
    else
        runuser -u "$RUN_AS" -- test -x "$dir" 2>/dev/null
    fi
}

# Give a path we created as root to RUN_AS.
give_to_run_as() {
    if is_root; then chown "$RUN_AS:" "$@"; fi
}

# Write stdin to a file owned by RUN_AS (mode 0600 as postgres would).
write_pg_file() { # path
    run_pg tee "$1" >/dev/null
}

pg_bin_ok() { # dir
    local d=$1 t
    for t in initdb pg_ctl postgres pg_basebackup; do
        [[ -x $d/$t ]] || return 1
    done
}

pg_find_newest_bin() {
    local d best="" v bestv=0
    for d in /usr/lib/postgresql/*/bin; do
        [[ -d $d ]] || continue
        pg_bin_ok "$d" || continue
        v=${d#/usr/lib/postgresql/}
        v=${v%/bin}
        v=${v%%.*}
        [[ $v =~ ^[0-9]+$ ]] || continue
        if ((v > bestv)); then
            bestv=$v
            best=$d
        fi
    done
    [[ -n $best ]] && printf '%s\n' "$best"
}

pg_install_server() {
    is_root || die "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin; PG_BIN unset).
  Install them, e.g.: sudo apt-get install -y postgresql postgresql-contrib
  or point PG_BIN at a directory containing initdb, pg_ctl, postgres and pg_basebackup."
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL not found and apt-get is unavailable; install PostgreSQL (with contrib) and set PG_BIN"
    log "PostgreSQL not found; installing with apt-get (postgresql postgresql-contrib)"
    export DEBIAN_FRONTEND=noninteractive
    local aopts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    apt-get update -q >&2 || die "apt-get update failed"
    # Install postgresql-common first and stop it from creating/starting the
    # default "main" cluster on port 5432; we only want the binaries.
    apt-get install "${aopts[@]}" postgresql-common >&2 || die "apt-get install postgresql-common failed"
    if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
        sed -i 's/^#\?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
        grep -q '^create_main_cluster = false' /etc/postgresql-common/createcluster.conf ||
            echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
    fi
    apt-get install "${aopts[@]}" postgresql postgresql-contrib >&2 ||
        die "apt-get install postgresql postgresql-contrib failed"
}

# Sets PG_BIN, PSQL, PG_MAJOR, PG_VERSION_STRING.
pg_locate() {
    if [[ -n ${PG_BIN:-} ]]; then
        pg_bin_ok "$PG_BIN" || die "PG_BIN=$PG_BIN does not contain initdb, pg_ctl, postgres and pg_basebackup"
    else
        PG_BIN=$(pg_find_newest_bin || true)
        if [[ -z $PG_BIN ]]; then
            pg_install_server
            PG_BIN=$(pg_find_newest_bin || true)
            [[ -n $PG_BIN ]] || die "PostgreSQL was installed but no /usr/lib/postgresql/*/bin was found"
        fi
    fi
    PG_BIN=$(cd "$PG_BIN" && pwd -P)
    if [[ -x $PG_BIN/psql ]]; then
        PSQL=$PG_BIN/psql
    elif command -v psql >/dev/null 2>&1; then
        PSQL=$(command -v psql)
    else
        die "psql not found (neither $PG_BIN/psql nor on PATH)"
    fi
    PG_VERSION_STRING=$("$PG_BIN/postgres" --version) || die "cannot run $PG_BIN/postgres --version"
    PG_MAJOR=$(sed -E 's/.* ([0-9]+)[.0-9a-z]*.*/\1/' <<<"$PG_VERSION_STRING")
    [[ $PG_MAJOR =~ ^[0-9]+$ ]] || die "cannot parse PostgreSQL version from: $PG_VERSION_STRING"
    ((PG_MAJOR >= 13)) || die "PostgreSQL $PG_MAJOR is too old (need >= 13)"
}

# amcheck and pgcrypto must be installable (contrib).
pg_check_contrib() {
    local share ext
    if [[ -x $PG_BIN/pg_config ]]; then
        share=$("$PG_BIN/pg_config" --sharedir)
    else
        share=/usr/share/postgresql/$PG_MAJOR
    fi
    for ext in amcheck pgcrypto; do
        [[ -f $share/extension/$ext.control ]] ||
            die "extension $ext is not available ($share/extension/$ext.control missing); install postgresql-contrib for PostgreSQL $PG_MAJOR"
    done
}

# ---------------------------------------------------------------- ports ----

# Ports currently bound/connected locally (decimal), from /proc/net/tcp{,6}.
ports_in_use() {
    local f
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $f ]] || continue
        awk 'NR > 1 { split($2, a, ":"); print a[2] }' "$f"
    done | sort -u | while read -r hex; do printf '%d\n' "0x$hex"; done
}

port_is_free() { # port
    local p=$1
    if [[ -r /proc/net/tcp ]]; then
        if ports_in_use | grep -qx "$p"; then return 1; fi
    fi
    # Something listening? (also covers systems without /proc/net/tcp)
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then return 1; fi
    return 0
}

# Pick a random free port below the kernel's ephemeral range; avoids ports in
# $PICKED_PORTS (space-separated). Result in PICKED_PORT.
PICKED_PORTS=""
pick_port() {
    local lo=10000 hi=32000 eph i p
    if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
        read -r eph _ </proc/sys/net/ipv4/ip_local_port_range
        if [[ $eph =~ ^[0-9]+$ ]] && ((eph > lo + 2000)); then hi=$((eph - 1)); fi
    fi
    for ((i = 0; i < 200; i++)); do
        p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
        [[ " $PICKED_PORTS " == *" $p "* ]] && continue
        if port_is_free "$p"; then
            PICKED_PORT=$p
            PICKED_PORTS="$PICKED_PORTS $p"
            return 0
        fi
    done
    die "could not find a free TCP port on 127.0.0.1"
}

# ------------------------------------------------------------ postmaster ----

# Print the postmaster pid of data dir $1 if it is running, else return 1.
pm_pid() { # datadir
    local dir=$1 pid comm cwd real
    [[ -r $dir/postmaster.pid ]] || return 1
    pid=$(head -n1 "$dir/postmaster.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -d /proc/$pid ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == postgres || $comm == postmaster ]] || return 1
    if cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null); then
        real=$(cd "$dir" 2>/dev/null && pwd -P) || real=$dir
        [[ $cwd == "$real" ]] || return 1
    fi
    printf '%s\n' "$pid"
}

pid_alive() { [[ -d /proc/$1 ]] && [[ $(cat "/proc/$1/stat" 2>/dev/null | awk '{print $3}') != Z ]]; }

wait_pid_gone() { # pid seconds
    local pid=$1 n=$(($2 * 10))
    while ((n-- > 0)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    ! pid_alive "$pid"
}

# Stop the server in data dir $1 (mode: immediate by default). Never fails.
pm_stop() { # datadir [mode]
    local dir=$1 mode=${2:-immediate} pid kid
    pid=$(pm_pid "$dir") || return 0
    if [[ -n ${PG_BIN:-} && -x $PG_BIN/pg_ctl ]]; then
        if ! run_pg "$PG_BIN/pg_ctl" -D "$dir" -m "$mode" -w -t 20 stop >/dev/null 2>&1; then
            [[ $mode == fast ]] || run_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w -t 20 stop >/dev/null 2>&1 || true
        fi
    else
        kill -QUIT "$pid" 2>/dev/null || true
    fi
    wait_pid_gone "$pid" 5 && return 0
    warn "postmaster $pid ($dir) did not stop; killing it"
    for kid in $(ps -o pid= --ppid "$pid" 2>/dev/null); do kill -KILL "$kid" 2>/dev/null || true; done
    kill -KILL "$pid" 2>/dev/null || true
    wait_pid_gone "$pid" 5 || warn "could not kill postmaster $pid"
}

# psql as the invoking user over TCP; prints unaligned tuples.
pg_query() { # port db sql
    PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5} "$PSQL" -X -q -At -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$1" -U postgres -d "$2" -c "$3"
}
