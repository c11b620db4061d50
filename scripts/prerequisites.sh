# Sourced by scripts/run.sh and scripts/test.sh: installs the system packages bindgate's build
# and tests need when they are missing (Debian), or says what to install.
#   cmake            Pingora's zlib-ng (libz-ng-sys) build
#   make, perl, gcc  the OpenSSL that Pingora builds from source (openssl-src)
#   curl, openssl    the tests' real-world clients and certificate checks
#   redis-server     the tests' own Redis servers and Redis Cluster (state.redis)
#   systemd          systemd-analyze, which checks deploy/bindgate.service
#   nodejs, npm      the tests' real OpenID provider (node-oidc-provider, tests/oidc)
#   umoci, binutils  scripts/image.sh's check of the OCI image and the test that unpacks it
#   python3-venv     the tests' OTLP receiver (opentelemetry-proto from PyPI, tests/otlp)
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v make >/dev/null 2>&1 || need+=(make)
command -v perl >/dev/null 2>&1 || need+=(perl)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
{ command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; } || need+=(redis-server)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v umoci >/dev/null 2>&1 || need+=(umoci)
{ command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; } || need+=(python3 python3-venv)
command -v strip >/dev/null 2>&1 || need+=(binutils)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing missing packages: ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing missing packages with sudo: ${need[*]}" >&2
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "bindgate needs these packages: ${need[*]}; install them (e.g. apt-get install -y ${need[*]}) and run again" >&2
    exit 1
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "bindgate needs the Rust toolchain (cargo); install it from https://rustup.rs and run again" >&2
  exit 1
fi
