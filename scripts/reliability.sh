#!/usr/bin/env bash
# The reliability suite on its own: every scenario of tests/reliability.rs against a
# real broker and etcd, then the table docs/design.md's "Reliability" section shows
# (scenario, files, lines written, missing, duplicated, the duplicate bound and why).
# scripts/test.sh runs the same scenarios as part of the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_tools
report=$(mktemp)
trap 'rm -f "$report"' EXIT
log "reliability scenarios (about 3 minutes)"
LOGAGENT_RELIABILITY_REPORT="$report" \
  cargo test --locked --test reliability -- --test-threads="${TEST_THREADS:-2}"
print_reliability_table "$report"
