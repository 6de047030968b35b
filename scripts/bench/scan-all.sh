#!/usr/bin/env bash
# Run every scan benchmark in turn and collect their result lines in
# target/bench/scan-results.txt (each script brings its own cluster up and down).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export BENCH_OUT=${BENCH_OUT:-$here/../../target/bench/scan-results.txt}
mkdir -p "$(dirname "$BENCH_OUT")"
{ echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GiB"; } >"$BENCH_OUT"
run() {
    local b=$1 log
    shift
    log="${BENCH_OUT%.txt}-$b-$(echo "$*" | tr ' =' '_-').log"
    echo "== $b $*" >&2
    env "$@" bash "$here/$b.sh" >/dev/null 2>"$log" || { echo "$b $* failed: see $log" >&2; exit 1; }
}
run scan-row-checksum ROW_BYTES=64 ROWS=2000000
run scan-row-checksum ROW_BYTES=1024 ROWS=1000000
run scan-row-checksum ROW_BYTES=65536 ROWS=16384
run scan-file-checksum FILES=200000 FILE_BYTES=4096
run scan-file-checksum FILES=256 FILE_BYTES=4194304
run scan-rss
run scan-primary-impact
cat "$BENCH_OUT"
