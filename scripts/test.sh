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
if cargo tree --locked -e normal,build 2>/dev/null | grep -i tokio; then
  echo "error: tokio is in the dependency tree" >&2
  exit 1
fi

log "cargo test"
cargo test --locked -- --test-threads="${TEST_THREADS:-2}"
