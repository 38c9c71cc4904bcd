#!/usr/bin/env bash
# The main job, end to end on this machine: starts a local Kafka-protocol broker
# (tansu) on 127.0.0.1:9092, runs logagent with the sample agent.yaml, appends lines to
# the files it follows, shows them arriving in Kafka, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_tools
log "building logagent (release)"
cargo build --release --locked >&2
BIN=target/release/logagent
DEMO=/tmp/logagent-demo
PORT=9092
BROKER=127.0.0.1:$PORT

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
  echo "error: something already listens on $BROKER; stop it first (the demo's agent.yaml points there)" >&2
  exit 1
fi

rm -rf "$DEMO" && mkdir -p "$DEMO/web"
log "starting tansu broker on $BROKER (in-memory store)"
"$TANSU_BIN" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
  --storage-engine memory://tansu/ >"$DEMO/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
"$TANSU_BIN" topic create demo_app --broker "tcp://$BROKER" --partitions 2 >/dev/null
"$TANSU_BIN" topic create demo_web --broker "tcp://$BROKER" --partitions 3 >/dev/null

log "writing 5 lines to $DEMO/app.log before the agent starts (from: beginning ships them)"
for i in 1 2 3 4 5; do echo "$(date -Is) app started, line $i" >>"$DEMO/app.log"; done

log "starting logagent: $BIN run -c agent.yaml"
"$BIN" run -c agent.yaml 2>"$DEMO/agent.log" &
agent=$!
pids+=($agent)
for _ in $(seq 1 100); do grep -q "following" "$DEMO/agent.log" 2>/dev/null && break; sleep 0.1; done

log "appending 5 more lines to app.log and creating web/access.log (a new glob match)"
for i in 6 7 8 9 10; do echo "$(date -Is) request handled, line $i" >>"$DEMO/app.log"; done
for i in 1 2 3; do echo "127.0.0.1 - - [$(date +%d/%b/%Y:%T)] \"GET /page/$i HTTP/1.1\" 200 512" >>"$DEMO/web/access.log"; done

log "reading back from Kafka (logagent consume): partition offset key value"
echo "--- topic demo_app"
"$BIN" consume --brokers "$BROKER" --topic demo_app --from-beginning --count 10 --idle-timeout-ms 20000
echo "--- topic demo_web"
"$BIN" consume --brokers "$BROKER" --topic demo_web --from-beginning --count 3 --idle-timeout-ms 20000

log "stopping the agent (SIGTERM: drain, flush, final checkpoint)"
kill -TERM "$agent"
wait "$agent" || true
echo "--- agent log"
cat "$DEMO/agent.log"
echo "--- registry ($DEMO/data/registry.json)"
cat "$DEMO/data/registry.json"
