#!/usr/bin/env bash
# The benchmark: one local Apache Kafka 4.1 broker (scripts/kafka.sh, one KRaft node,
# 1 GiB heap), then in one run, interleaved,
# repeated (medians reported): two yardsticks, a bare rdkafka producer measured over its
# sending alone (librdkafka defaults, payload only; the agent's settings and headers),
# logagent on a pre-written file, logagent with 8 live writers, append→consume latency
# at a steady 20k lines/s, and 500 idle files; `--cases many` adds 10,000 files on one
# agent (following, idle, a line per file per second). Every run counts and checksums what
# arrived; a run that lost or duplicated lines is reported as FAILED, not as fast.
#
#   scripts/bench.sh [--no-peers] [--lines N] [--reps N] [--cases a,b,...] [--latency-secs S] [--idle-secs S]
#                    [--agents old=PATH,new=PATH]   (A/B: b) and c) once per binary per repetition)
#
# A local etcd is started too, for the config-change case (etcd put → first line of the
# newly configured file consumed). Writes bench/results.json and prints the table.
# Peers: rsyslog (imfile → omkafka) and syslog-ng (file → kafka-c) on the same kind of
# pre-written file into the same broker, installed here (Debian packages; rsyslog
# unpacked privately) and run against the librdkafka that rdkafka-sys built.
# --no-peers skips them (the table then says they were not run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_tools
peers=1
args=()
for a in "$@"; do
  if [ "$a" = --no-peers ]; then peers=0; else args+=("$a"); fi
done
[ "$peers" = 1 ] && ensure_peers
log "building release binaries"
cargo build --release --locked --bin logagent --example bench >&2
# The newest librdkafka.so.1 that rdkafka-sys built for this release build.
RDKAFKA_LIB=$(dirname "$(ls -t target/release/build/rdkafka-sys-*/out/src/librdkafka.so.1 2>/dev/null | head -1)")
peer_args=()
if [ "$peers" = 1 ]; then
  peer_args=(--rdkafka-lib "$RDKAFKA_LIB" --rsyslog-root "$RSYSLOG_ROOT" --syslog-ng "$(command -v syslog-ng || true)")
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); EPORT=$(free_port); PPORT=$(free_port)
WORK=$(mktemp -d /tmp/logagent-bench.XXXXXX)
KAFKA_PORT=$PORT KAFKA_HEAP=1g bash scripts/kafka.sh start "$WORK/kafka" >/dev/null
etcd --name bench --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$EPORT" --advertise-client-urls "http://127.0.0.1:$EPORT" \
  --listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" \
  --initial-cluster "bench=http://127.0.0.1:$PPORT" >"$WORK/etcd.log" 2>&1 &
etcd_pid=$!
trap 'bash scripts/kafka.sh stop "$WORK/kafka"; kill $etcd_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
for p in $PORT $EPORT; do
  for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.2; done
done

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Options given to this script come first: the driver takes the first of each, so
# they win over the defaults here (e.g. --out for a side run).
target/release/examples/bench "${args[@]}" --brokers "127.0.0.1:$PORT" \
  --etcd "http://127.0.0.1:$EPORT" --agent target/release/logagent --work "$WORK" \
  --out bench/results.json "${peer_args[@]}"
