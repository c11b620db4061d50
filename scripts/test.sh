#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the black-box tests against the real binary over real
# TLS, and the check of the shipped proxy.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prerequisites.sh
cargo test --all-targets "$@"
