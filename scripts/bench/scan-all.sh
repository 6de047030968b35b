#!/usr/bin/env bash
# Run every scan benchmark in turn and collect their result lines in
# target/bench/scan-results.txt (each script brings its own cluster up and down).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export BENCH_OUT=${BENCH_OUT:-$here/../../target/bench/scan-results.txt}
mkdir -p "$(dirname "$BENCH_OUT")"
{ echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GiB"; } >"$BENCH_OUT"
for b in scan-row-checksum scan-file-checksum scan-rss scan-primary-impact; do
    echo "== $b" >&2
    bash "$here/$b.sh" >/dev/null 2>"${BENCH_OUT%.txt}-$b.log" || { echo "$b failed: see ${BENCH_OUT%.txt}-$b.log" >&2; exit 1; }
done
cat "$BENCH_OUT"
