#!/usr/bin/env bash
# The fleet benchmark: N simulated agents (each the agent's real config thread,
# `logagent::central::run`, with its watcher thread and a counting stub instead of
# tailers; at most --agents-per-worker of them, default 2000, per worker process, so
# 10,000 fit under a 20,000 open-files limit) against a 3-member etcd cluster on loopback. Measures, in one run: start-up
# (all agents applied their first config), an idle fleet (etcd requests/s, revisions/s,
# writes/s, etcd CPU/RSS, the fleet's own CPU/RSS), a group-key change applied by every
# agent (p50/p99/max, repeated), and per-agent costs extrapolated to 10,000 hosts.
#
#   scripts/fleet-bench.sh [--agents N] [--idle-secs S] [--changes K] [other options of examples/fleet.rs]
#
# Defaults: 2000 agents, 60 s idle, 5 changes 10 s apart. Targets: idle fleet ≤ 1 etcd
# write/s; every agent applied a change within 1 s (p99). Other options (passed on):
# --change-window-secs, --change-timeout-secs, --startup-timeout-secs, --baseline-secs,
# --stack-kib, --java-every, --host-key-every, --agents-per-worker, --out (see
# examples/fleet.rs).
#
# Writes bench/fleet-results.json and prints a Markdown table. etcd (Debian's 3.4
# etcd-server) keeps its data in a temp dir on disk; the agents' data dirs (the config
# thread writes a cache file on every apply) are on tmpfs (/dev/shm) when there is one.
# Everything started here is stopped and removed on exit, also on failure or Ctrl-C.
# On a shared machine, run it under `nice -n 10`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# Only etcd: not ensure_tools, which would also fetch Kafka (and a Java runtime) that
# this benchmark does not use.
ensure_apt etcd etcd-server
command -v etcd >/dev/null 2>&1 || { echo "fleet-bench: etcd is not on PATH (Debian package etcd-server)" >&2; exit 1; }

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*)
      [ $# -ge 2 ] || { echo "fleet-bench: $1 needs a value" >&2; exit 2; }
      args+=("$1" "$2"); shift 2 ;;
    *) echo "fleet-bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Two threads per agent (config + watcher): the machine's thread and pid limits must
# hold them besides etcd's; say so before starting rather than fail half-way.
agents=2000
for ((i = 0; i < ${#args[@]}; i += 2)); do
  [ "${args[$i]}" = --agents ] && agents=${args[$((i + 1))]}
done
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 0)
threads_max=$(cat /proc/sys/kernel/threads-max 2>/dev/null || echo 0)
need=$((2 * agents + 2000))
for lim in "pid_max:$pid_max" "threads-max:$threads_max"; do
  if [ "${lim#*:}" -gt 0 ] && [ "${lim#*:}" -lt "$need" ]; then
    echo "fleet-bench: /proc/sys/kernel/${lim%%:*} is ${lim#*:}; $agents agents need about $need threads" >&2
    exit 1
  fi
done

log "building the fleet example (release)"
cargo build --release --locked --example fleet >&2
BIN="${CARGO_TARGET_DIR:-target}/release/examples/fleet"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/logagent-fleet.XXXXXX)
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  AGENTS=$(mktemp -d /dev/shm/logagent-fleet.XXXXXX)
else
  AGENTS="$WORK/agents"; mkdir -p "$AGENTS"
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK" "$AGENTS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cluster=""; endpoints=""; declare -a cport pport
for i in 0 1 2; do
  cport[$i]=$(free_port); pport[$i]=$(free_port)
  cluster+="${cluster:+,}m$i=http://127.0.0.1:${pport[$i]}"
  endpoints+="${endpoints:+,}http://127.0.0.1:${cport[$i]}"
done
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$WORK/m$i" \
    --listen-client-urls "http://127.0.0.1:${cport[$i]}" --advertise-client-urls "http://127.0.0.1:${cport[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${pport[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pport[$i]}" \
    --initial-cluster "$cluster" --initial-cluster-token "fleet-$$" --initial-cluster-state new \
    >"$WORK/m$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do
  ok=0
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/${cport[$i]}") 2>/dev/null; then ok=1; break; fi
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then break; fi
    sleep 0.2
  done
  if [ "$ok" != 1 ]; then
    echo "fleet-bench: etcd member m$i did not start; its log:" >&2
    tail -20 "$WORK/m$i.log" >&2
    exit 1
  fi
done

ETCD_VERSION=$(etcd --version | head -1 | sed 's/^etcd Version: //')
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), etcd $ETCD_VERSION"
log "etcd cluster: $endpoints (pids ${pids[*]})"
# Options given to this script come first: the example takes the first of each.
status=0
"$BIN" "${args[@]}" --endpoints "$endpoints" --etcd-pids "$(IFS=,; echo "${pids[*]}")" \
  --data-root "$AGENTS" --etcd-version "$ETCD_VERSION" --out bench/fleet-results.json || status=$?
if [ "$status" != 0 ]; then
  echo "fleet-bench: the benchmark failed (exit $status); etcd's last log lines:" >&2
  for i in 0 1 2; do echo "--- m$i" >&2; tail -5 "$WORK/m$i.log" >&2; done
  exit "$status"
fi
