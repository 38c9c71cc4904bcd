#!/usr/bin/env bash
# The benchmark: one local tansu broker (memory store), then in one run, interleaved,
# repeated (medians reported): a bare rdkafka producer from memory (the yardstick),
# logagent on a pre-written file, logagent with 8 live writers, append→consume latency
# at a steady 20k lines/s, and 500 idle files. Every run counts and checksums what
# arrived; a run that lost or duplicated lines is reported as FAILED, not as fast.
#
#   scripts/bench.sh [--lines N] [--reps N] [--cases a,b,...] [--latency-secs S] [--idle-secs S]
#
# Writes bench/results.json and prints the table. Peers (rsyslog, syslog-ng) are not
# run by this script yet; see README "Benchmarks".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_tools
log "building release binaries"
cargo build --release --locked --bin logagent --example bench >&2

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
WORK=$(mktemp -d /tmp/logagent-bench.XXXXXX)
"$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >"$WORK/broker.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/release/examples/bench --brokers "127.0.0.1:$PORT" --tansu "$TANSU_BIN" \
  --agent target/release/logagent --work "$WORK" --out bench/results.json "$@"
