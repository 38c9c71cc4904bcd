#!/usr/bin/env bash
# Builds a logagent binary for old servers: linked against an old glibc with
# cargo-zigbuild (crates.io) and zig (the `ziglang` package from PyPI), both installed
# here when missing. Prints the binary's size, the shared libraries it needs, and the
# newest glibc symbol version it references (its glibc floor); fails if the floor is
# above the target or if it needs a library outside the libc family.
#
#   scripts/build-portable.sh [GLIBC]     # default 2.17 (CentOS 7 / RHEL 7)
#
# glibc 2.17 has no C11 threads (thrd_create, mtx_lock: 2.28). librdkafka's configure
# uses them when <threads.h> compiles, else its bundled tinycthread on pthreads;
# scripts/portable/threads.h, first on the include path (rdkafka-sys passes CFLAGS to
# configure), makes that check fail. Chosen over a patched rdkafka-sys (a fork to
# keep up with) or dynamic linking (a librdkafka to ship beside the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
GLIBC=${1:-2.17}
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
CFLAGS="-I$PWD/scripts/portable ${CFLAGS:-}" \
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
for lib in $(objdump -p "$BIN" | awk '/NEEDED/ {print $2}'); do
  case "$lib" in
    libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | libgcc_s.so.1 | ld-linux-x86-64.so.2) ;;
    *) echo "error: the binary needs $lib, which old servers may not have" >&2; exit 1 ;;
  esac
done
if objdump -T "$BIN" | grep -qw thrd_create; then
  echo "error: the binary uses C11 threads (glibc 2.28)" >&2
  exit 1
fi
"$BIN" --version
