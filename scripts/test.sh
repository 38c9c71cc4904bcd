#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting, lints, the
# no-tokio rule, then runs every unit and integration test (real broker, real files).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_tools
log "tansu: $("$TANSU_BIN" --version 2>&1 | head -1); etcd: $(etcd --version 2>&1 | head -1)"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

log "no async runtime in the dependency tree"
if cargo tree --locked 2>/dev/null | grep -i tokio; then
  echo "error: tokio is in the dependency tree" >&2
  exit 1
fi

log "cargo test"
out=$(mktemp)
report=$(mktemp)
trap 'rm -f "$out" "$report"' EXIT
LOGAGENT_RELIABILITY_REPORT="$report" \
  cargo test --locked -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$out"
passed=$(grep -o '[0-9]* passed' "$out" | awk '{s+=$1} END {print s+0}')
failed=$(grep -o '[0-9]* failed' "$out" | awk '{s+=$1} END {print s+0}')

# The binary for old servers: built against glibc 2.28 with cargo-zigbuild, and its
# glibc floor checked with objdump (the script fails if the floor is higher).
log "portable release binary (glibc 2.28)"
bash scripts/build-portable.sh 2.28

log "reliability scenarios"
print_reliability_table "$report"
echo "tests: $passed passed, $failed failed"
