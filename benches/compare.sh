#!/usr/bin/env bash
# bindgate and HAProxy side by side on scenarios a (ES256 and RS256), b and e, each proxy pinned
# to CPU 1 with one thread, the load on CPU 0; prints the table and the ratios, and writes JSON.
#   benches/compare.sh                 # 5 s per cell
#   DURATION=10 benches/compare.sh --connections 64
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prerequisites.sh
if ! command -v haproxy >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  else
    echo "the comparison needs HAProxy: apt-get install -y haproxy" >&2
    exit 1
  fi
fi
command -v taskset >/dev/null 2>&1 || { echo "taskset (util-linux) is needed for --pin" >&2; exit 1; }
exec cargo bench --bench load -- --scenario a-es256,a-rs256,b,e --proxy both --pin \
  --duration "${DURATION:-5}" --json "${JSON:-target/load-compare.json}" "$@"
