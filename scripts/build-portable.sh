#!/usr/bin/env bash
# Builds a logagent binary for old servers: linked against an old glibc with
# cargo-zigbuild (crates.io) and zig (the `ziglang` package from PyPI), both installed
# here when missing. Prints the binary's size, the shared libraries it needs, and the
# newest glibc symbol version it references (its glibc floor); fails if the floor is
# above the target.
#
#   scripts/build-portable.sh [GLIBC]     # default 2.28
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
GLIBC=${1:-2.28}
TARGET=x86_64-unknown-linux-gnu

if ! python3 -m ziglang version >/dev/null 2>&1; then
  log "installing zig (PyPI package ziglang)"
  pip install --quiet ziglang >&2
fi
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
  log "installing cargo-zigbuild"
  cargo install --locked cargo-zigbuild >&2
fi
rustup target list --installed | grep -q "^$TARGET$" || rustup target add "$TARGET" >&2

log "building for $TARGET with glibc $GLIBC"
# A separate target dir: the zig-linked build must not mix with the host build.
CARGO_TARGET_DIR=target/portable cargo zigbuild --release --locked --bin logagent \
  --target "$TARGET.$GLIBC" >&2
BIN=target/portable/$TARGET/release/logagent

floor=$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n -u | tail -1)
echo "binary:     $BIN"
echo "size:       $(stat -c %s "$BIN") bytes"
echo "needs:      $(objdump -p "$BIN" | awk '/NEEDED/ {print $2}' | xargs)"
echo "glibc floor: $floor (target $GLIBC)"
if [ "$(printf '%s\n%s\n' "$floor" "$GLIBC" | sort -t. -k1,1n -k2,2n | tail -1)" != "$GLIBC" ]; then
  echo "error: the binary needs glibc $floor, newer than $GLIBC" >&2
  exit 1
fi
"$BIN" --version
