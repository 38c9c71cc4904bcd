#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting, lints, the
# no-tokio rule, then runs every unit and integration test (real broker, real files).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_tools
log "Kafka: $(ls "$KAFKA_LIBS" | sed -n 's/^kafka_2.13-\(.*\)\.jar$/\1/p'); $(java -version 2>&1 | head -1); etcd: $(etcd --version 2>&1 | head -1)"

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
trap 'rm -f "$out" "$report" "$report.portable"' EXIT
LOGAGENT_RELIABILITY_REPORT="$report" \
  cargo test --locked -- --test-threads="${TEST_THREADS:-2}" 2>&1 | tee "$out"

# Every input from outside the process, fuzzed for a bounded time per target (fuzz/,
# scripts/fuzz.sh): a crash fails the run and names the input.
log "fuzzing (${FUZZ_SECONDS:-20} s per target)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"

# The binary for old servers: built against glibc 2.17 with cargo-zigbuild (librdkafka
# on its bundled tinycthread), its glibc floor and libraries checked with objdump (the
# script fails if the floor is higher or a library is not of the libc family).
log "portable release binary (glibc 2.17)"
# (Not `tee /dev/stderr`: when stderr is a file, reopening it truncates the log.)
bash scripts/build-portable.sh | tee "$report.portable"
portable=$(sed -n 's/^binary: *//p' "$report.portable")

# The same binary through the core and security tests: the tinycthread build with its
# static OpenSSL is the one that ships, so it is the one that must not lose lines and
# must talk SASL_SSL, mutual TLS and OAUTHBEARER. (The reliability scenarios ran on the
# host build above; on this one too they would take CI past 30 minutes.)
log "core and security tests on the portable binary ($portable)"
LOGAGENT_BIN="$PWD/$portable" \
  cargo test --locked --test core --test security -- --test-threads="${TEST_THREADS:-2}" 2>&1 |
  tee -a "$out"

# .deb and .rpm from it; the .deb installed, run as its user, upgraded, purged.
log "packages"
bash scripts/package.sh --binary "$portable"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
mkdir -p target/packages/first
cp "target/packages/logagent_${version}_amd64.deb" target/packages/first/
bash scripts/package.sh --binary "$portable" --version "$version+upgrade1" >/dev/null
bash scripts/check-packages.sh "target/packages/first/logagent_${version}_amd64.deb" \
  "target/packages/logagent_${version}+upgrade1_amd64.deb" \
  "target/packages/logagent-${version}.x86_64.rpm"
passed=$(grep -o '[0-9]* passed' "$out" | awk '{s+=$1} END {print s+0}')
failed=$(grep -o '[0-9]* failed' "$out" | awk '{s+=$1} END {print s+0}')

log "reliability scenarios"
print_reliability_table "$report"
echo "tests: $passed passed, $failed failed"
