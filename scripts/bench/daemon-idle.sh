#!/usr/bin/env bash
# What an idle `pgmaint daemon` costs: CPU (utime+stime from /proc/PID/stat, as % of one
# core) and memory (VmRSS, VmHWM from /proc/PID/status) of a daemon that leads the
# scheduler, runs its upload worker and serves daemon.listen, with three scheduled
# tasks and a dump whose slots are far away (`at = "0 3 * * *"` in a zone where 03:00
# is not within the window; the script checks that no run happens).
# Two windows of WINDOW seconds each, one after the other:
#   quiet    nobody talks to the daemon: its own ticks (scheduler every 1 s, leader
#            lease renewal, uploader poll and rescue every uploader.poll_interval)
#   scraped  /metrics and /health fetched every SCRAPE seconds, as Prometheus would
#            (each scrape reads the primary's tables and every replica)
# The daemon settles for SETTLE seconds first. Goals: CPU < 1 % of a core, RSS < 32 MB.
#   WINDOW=60   SCRAPE=15   SETTLE=10
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/daemon-common.sh"
WINDOW=${WINDOW:-60}
SCRAPE=${SCRAPE:-15}
SETTLE=${SETTLE:-10}
CPU_GOAL=1
RSS_GOAL_MB=32

bench_cluster daemon-idle
"$PGMAINT" --config "$CONFIG_BASE" init >/dev/null 2>&1
psql_p -c "CREATE TABLE blobs (id bigint PRIMARY KEY, payload bytea, payload_md5 text)" \
    -c "INSERT INTO blobs SELECT g, p, md5(p) FROM (SELECT g, convert_to(g::text, 'UTF8') AS p FROM generate_series(1, 1000) g) s" >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A zone in which 03:00 is at least 4 hours away from now, so no slot falls in the run.
TZ_NAME=$(python3 - <<'PY'
import datetime, zoneinfo
now = datetime.datetime.now(datetime.timezone.utc)
for z in ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Paris", "Asia/Kolkata"]:
    h = now.astimezone(zoneinfo.ZoneInfo(z)).hour
    if (3 - h) % 24 >= 4:
        print(z); break
PY
)
CONFIG=$CLUSTER_DIR/daemon.toml
mkdir -p "$CLUSTER_DIR/dumps"
config "$CONFIG" "[daemon]
listen = \"127.0.0.1:$PORT\"
timezone = \"$TZ_NAME\"

[[tasks]]
name = \"blob-integrity\"
kind = \"row_checksum\"
table = \"public.blobs\"
key = \"id\"
content = \"payload\"
checksum = \"payload_md5\"
at = \"0 3 * * *\"

[[tasks]]
name = \"amcheck-all\"
kind = \"amcheck\"
at = \"15 3 * * *\"

[[tasks]]
name = \"blob-count\"
kind = \"materialize\"
query = \"SELECT count(*) AS n FROM blobs\"
target = \"public.blob_count\"
at = \"30 3 * * *\"

[[dumps]]
name = \"nightly\"
out = \"$CLUSTER_DIR/dumps/nightly\"
at = \"45 3 * * *\""
start_daemon "$CONFIG" "$CLUSTER_DIR/daemon.log"
sleep "$SETTLE"
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -q '^pgmaint_scheduler_leader 1' ||
    { echo "the daemon does not lead the scheduler after ${SETTLE}s" >&2; cat "$CLUSTER_DIR/daemon.log" >&2; exit 1; }

# xacts: transactions committed or rolled back in the primary's database so far (this
# query's own included; statistics are flushed by each backend at most once a second).
xacts() { psql_p -Atc "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"; }

# window NAME SCRAPE_EVERY(0 = none): CPU % and RSS over WINDOW seconds.
window() {
    local name=$1 every=$2 t0 t1 c0 c1 x0 x1 scrapes=0 failed=0 next
    x0=$(xacts)
    c0=$(cpu_ticks "$DAEMON_PID"); t0=$(now)
    next=0
    while (($(echo "$(now) - $t0 < $WINDOW" | bc -l))); do
        if ((every > 0)) && (($(echo "$(now) - $t0 >= $next" | bc -l))); then
            curl -fsS -o /dev/null "http://127.0.0.1:$PORT/metrics" || failed=$((failed + 1))
            curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health" || failed=$((failed + 1))
            scrapes=$((scrapes + 1))
            next=$((next + every))
        fi
        sleep 0.2
    done
    c1=$(cpu_ticks "$DAEMON_PID"); t1=$(now)
    x1=$(xacts)
    local cpu rss hwm
    cpu=$(cpu_pct $((c1 - c0)) "$(secs "$t0" "$t1")")
    rss=$(status_kb "$DAEMON_PID" VmRSS); hwm=$(status_kb "$DAEMON_PID" VmHWM)
    local verdict=PASS
    (($(echo "$cpu < $CPU_GOAL" | bc -l))) || verdict=FAIL
    result "daemon idle, $name ($(secs "$t0" "$t1")s, $scrapes scrapes of /metrics+/health, $failed failed):" \
        "CPU ${cpu}% of one core ($((c1 - c0)) ticks) [goal < ${CPU_GOAL}%: $verdict]"
    verdict=PASS
    (($(echo "$(mb "$hwm") < $RSS_GOAL_MB" | bc -l))) || verdict=FAIL
    result "daemon idle, $name: ~$(echo "($x1 - $x0) / $(secs "$t0" "$t1")" | bc -l | xargs printf '%.1f') transactions/s on the primary's database (pg_stat_database, all clients)"
    result "daemon idle, $name: VmRSS $(mb "$rss") MB, VmHWM $(mb "$hwm") MB [goal < ${RSS_GOAL_MB} MB: $verdict]"
}
window quiet 0
window "scraped every ${SCRAPE}s" "$SCRAPE"

runs=$(psql_p -Atc "SELECT count(*) FROM pgmaint.runs")
[[ $runs == 0 ]] || { echo "unexpected: $runs run(s) during the idle windows" >&2; exit 1; }
threads=$(awk '$1 == "Threads:" { print $2 }' "/proc/$DAEMON_PID/status")
sessions=$(psql_p -Atc "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgmaint%'")
result "daemon idle: $threads threads, $sessions sessions on the primary; no run started (zone $TZ_NAME)"
t0=$(now)
stop_daemon
result "daemon idle: SIGTERM -> exited in $(secs "$t0" "$(now)")s"
warns=$(grep -cE ' (WARN|ERROR) ' "$CLUSTER_DIR/daemon.log" || true)
((warns == 0)) || { echo "the daemon logged $warns warning/error line(s):" >&2; grep -E ' (WARN|ERROR) ' "$CLUSTER_DIR/daemon.log" | head -5 >&2; }
grep -q 'daemon stopped' "$CLUSTER_DIR/daemon.log" || { echo "the daemon did not log 'daemon stopped'" >&2; tail -5 "$CLUSTER_DIR/daemon.log" >&2; }
