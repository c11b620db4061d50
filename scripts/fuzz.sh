#!/usr/bin/env bash
# Coverage-guided fuzzing of bindgate's parsers (libFuzzer through cargo-fuzz, on the stable
# toolchain, without a sanitizer): every target of src/fuzzing.rs, RUNS executions each.
#   scripts/fuzz.sh                      10 000 000 executions per target
#   scripts/fuzz.sh 1000000 jwt config   one million, two targets
# The corpus grows under fuzz/corpus/<target>/ (only the seed-* files are committed); a crash
# is written to fuzz/artifacts/<target>/ and stops the run. FUZZING.md records the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/prerequisites.sh
runs="${1:-10000000}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(jwt jwks bearer dpop_proof request_target config session_json client_json)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd fuzz
cargo fuzz build -s none
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  start=$(date +%s)
  cargo fuzz run -s none "$t" "corpus/$t" -- \
    -runs="$runs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"logs/$t.log" 2>&1
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo "?")
  echo "$t: $execs executions in $(( $(date +%s) - start )) s, no crash"
done
