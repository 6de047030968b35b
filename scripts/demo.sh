#!/usr/bin/env bash
# The demo: build pgmaint, start a throwaway primary + streaming replica, seed about
# 200k blobs with a few deliberate corruptions, then run a full cycle (init, run,
# uploader --once, status) and show the findings as the primary now holds them.
#
#   scripts/demo.sh [--keep]      --keep leaves the cluster running afterwards
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1

if ! command -v cargo >/dev/null; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi

dir="$PWD/target/demo-cluster"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
stop_cluster() { [ "$keep" = 1 ] || bash scripts/cluster.sh down --dir "$dir" >/dev/null 2>&1 || true; }
trap stop_cluster EXIT

step "build (release)"
cargo build --release -p pgmaint
pgmaint="$PWD/target/release/pgmaint"

step "start a throwaway primary + streaming replica"
bash scripts/cluster.sh down --dir "$dir" >/dev/null 2>&1 || true
bash scripts/cluster.sh up --dir "$dir"
# shellcheck disable=SC1091
. "$dir/cluster.env"
psql_p() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d app "$@"; }

step "seed 200,000 blobs on the primary, and corrupt a few"
psql_p <<'SQL'
CREATE TABLE public.blobs (id bigint PRIMARY KEY, payload bytea, payload_md5 text);
INSERT INTO public.blobs
SELECT g, p, md5(p)
  FROM (SELECT g, convert_to(repeat(md5(g::text), 1 + g % 16), 'UTF8') AS p
          FROM generate_series(1, 200000) g) s;
-- The deliberate corruptions:
UPDATE public.blobs SET payload = overlay(payload placing '\x00'::bytea from 5) WHERE id IN (4242, 123456); -- bit rot
UPDATE public.blobs SET payload_md5 = NULL WHERE id = 99999;                     -- checksum lost
UPDATE public.blobs SET payload = NULL WHERE id = 180000;                        -- content lost
ANALYZE public.blobs;
SQL
cat >> "$dir/pgmaint.toml" <<'TOML'

[scan]
progress_interval = "2s"

[[tasks]]
name = "blob-integrity"
kind = "row_checksum"          # md5 of a content column against a stored md5 column
table = "public.blobs"
key = "id"
content = "payload"
checksum = "payload_md5"
soft_timeout = "00:30:00"
TOML
export PGMAINT_CONFIG="$dir/pgmaint.toml"
echo "config: $PGMAINT_CONFIG"

step "pgmaint init"
"$pgmaint" init

step "pgmaint run   (pause replay, scan the frozen snapshot, queue uploads, resume)"
# Let the replica replay the seed first (pgmaint refuses a large backlog anyway).
sleep 1
"$pgmaint" run

step "meanwhile, someone repairs row 4242 on the primary (after the snapshot)"
psql_p -c "UPDATE public.blobs SET payload_md5 = md5(payload) WHERE id = 4242"

step "pgmaint uploader --once   (apply the findings on the primary, re-checking each row there)"
"$pgmaint" uploader --once

step "pgmaint status"
"$pgmaint" status

step "findings on the primary (pgmaint.integrity_findings; still_holds = f: fixed since the snapshot)"
psql_p -c "SELECT run_id, snapshot_lsn, relation, row_key, finding, still_holds, detail
             FROM pgmaint.integrity_findings ORDER BY row_key::bigint"

if [ "$keep" = 1 ]; then
    echo
    echo "cluster left running: PGMAINT_CONFIG=$PGMAINT_CONFIG; stop it with: scripts/cluster.sh down --dir $dir"
fi
