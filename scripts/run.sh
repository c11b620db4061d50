#!/usr/bin/env bash
# Builds bindgate (release), creates the development certificates and tokens under certs/dev
# when they are missing, and runs it on the shipped proxy.yaml. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prerequisites.sh
cargo build --release
./target/release/bindgate dev-certs certs/dev
exec ./target/release/bindgate run -c proxy.yaml "$@"
