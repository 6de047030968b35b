#!/usr/bin/env bash
# The whole test suite: unit tests, then end-to-end tests of the pgmaint binary
# against real throwaway PostgreSQL primaries and streaming replicas
# (scripts/cluster.sh; one cluster per test). Stops every server it started.
#
#   scripts/test.sh [extra cargo test args, e.g. a test name filter]
#
# Environment: PGMAINT_TEST_THREADS (default 3) — e2e tests run in parallel, each
# with its own cluster; they mostly wait on PostgreSQL, so 3 suits 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi

cleanup() {
    # Any cluster a test left behind (a panic in Drop, a killed test binary).
    for d in target/e2e/*/ target/e2e-probe/; do
        [ -d "$d" ] && bash scripts/cluster.sh down --dir "${d%/}" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== build"
cargo build --workspace --all-targets

echo "== PostgreSQL for the tests (installs the server if missing; warms the template)"
bash scripts/cluster.sh up --dir target/e2e-probe >/dev/null
bash scripts/cluster.sh down --dir target/e2e-probe >/dev/null

log=$(mktemp)
status=0
echo "== unit tests"
cargo test --no-fail-fast --workspace --exclude pgmaint-e2e 2>&1 | tee -a "$log" || status=1

echo "== end-to-end tests (real primary + streaming replicas)"
PGMAINT_BIN="$PWD/target/debug/pgmaint" \
    cargo test --no-fail-fast -p pgmaint-e2e --test '*' -- --test-threads="${PGMAINT_TEST_THREADS:-3}" "$@" 2>&1 \
    | tee -a "$log" || status=1

# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "\ntotal: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
rm -f "$log"
exit $status
