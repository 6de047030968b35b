# Shared by the scan benchmarks: a throwaway cluster (brought down on exit), psql
# helpers, timing and peak-RSS measurement. Source it; do not run it.
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
