#!/usr/bin/env bash
# The main job, end to end on this machine: starts a local etcd (127.0.0.1:2379) and
# Apache Kafka 4.1 (one KRaft node from its Maven Central jars, 127.0.0.1:9092), pushes a collect list to etcd, runs
# logagent with the sample agent.yaml, writes log lines, shows them arriving in Kafka,
# changes the collect list live, shows the status the agent writes back, and stops
# everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_tools
log "building logagent (release)"
cargo build --release --locked >&2
BIN=$PWD/target/release/logagent
DEMO=/tmp/logagent-demo
BROKER=127.0.0.1:9092
ETCD=http://127.0.0.1:2379

pids=()
cleanup() {
  bash scripts/kafka.sh stop "$DEMO/kafka" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 150); do listening "$1" && return 0; sleep 0.2; done; echo "error: nothing listens on port $1" >&2; return 1; }
for port in 9092 9093 2379 2380; do
  if listening $port; then
    echo "error: port $port is in use; the demo's agent.yaml needs 9092 (Kafka) and 2379 (etcd)" >&2
    exit 1
  fi
done

rm -rf "$DEMO" && mkdir -p "$DEMO/web"
log "starting etcd on $ETCD"
etcd --name demo --data-dir "$DEMO/etcd" --listen-client-urls $ETCD --advertise-client-urls $ETCD \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster demo=http://127.0.0.1:2380 >"$DEMO/etcd.log" 2>&1 &
pids+=($!)
log "starting Apache Kafka on $BROKER (one KRaft node, data in $DEMO/kafka)"
KAFKA_PORT=9092 KAFKA_CTRL_PORT=9093 bash scripts/kafka.sh start "$DEMO/kafka" >/dev/null
wait_port 2379
log "creating topics demo_app (2 partitions) and demo_web (3) with Kafka's TopicCommand"
for t in demo_app:2 demo_web:3; do
  bash scripts/kafka.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BROKER" \
    --create --topic "${t%%:*}" --partitions "${t##*:}" >/dev/null
done

log "writing 5 lines to $DEMO/app.log"
for i in 1 2 3 4 5; do echo "$(date -Is) app started, line $i" >>"$DEMO/app.log"; done

cat >"$DEMO/collect.json" <<JSON
[{"path": "$DEMO/app.log", "topic": "demo_app", "from": "beginning"}]
JSON
log "pushing the collect list to etcd: logagent config push -c agent.yaml --file $DEMO/collect.json"
"$BIN" config push -c agent.yaml --file "$DEMO/collect.json"

log "starting logagent: $BIN run -c agent.yaml"
"$BIN" run -c agent.yaml 2>"$DEMO/agent.log" &
agent=$!
pids+=($agent)

log "reading back from Kafka (logagent consume): partition offset key value"
echo "--- topic demo_app"
"$BIN" consume --brokers "$BROKER" --topic demo_app --from-beginning --count 5 --idle-timeout-ms 30000

log "changing the collect list live: adding $DEMO/web/*.log (keyed by host:path)"
cat >"$DEMO/collect.json" <<JSON
[{"path": "$DEMO/app.log", "topic": "demo_app", "from": "beginning"},
 {"path": "$DEMO/web/*.log", "topic": "demo_web", "from": "beginning",
  "partitioner": "key", "key": "{host}:{path}"},
 {"path": "/etc/shadow", "topic": "stolen"}]
JSON
"$BIN" config push -c agent.yaml --file "$DEMO/collect.json"
for i in 1 2 3; do echo "127.0.0.1 - - [$(date +%d/%b/%Y:%T)] \"GET /page/$i HTTP/1.1\" 200 512" >>"$DEMO/web/access.log"; done
for i in 6 7 8; do echo "$(date -Is) request handled, line $i" >>"$DEMO/app.log"; done
echo "--- topic demo_web"
"$BIN" consume --brokers "$BROKER" --topic demo_web --from-beginning --count 3 --idle-timeout-ms 30000
echo "--- topic demo_app"
"$BIN" consume --brokers "$BROKER" --topic demo_app --from-beginning --count 8 --idle-timeout-ms 30000

log "what the agent reports back to etcd: logagent status -c agent.yaml"
for _ in $(seq 1 50); do
  out=$("$BIN" status -c agent.yaml 2>/dev/null || true)
  # until both files show lag 0 (everything acknowledged)
  [ "$(echo "$out" | awk '$1 ~ /^\// && $5 == 0' | wc -l)" -ge 2 ] && break
  sleep 0.2
done
echo "$out"

log "stopping the agent (SIGTERM: drain, flush, final checkpoint)"
kill -TERM "$agent"
wait "$agent" || true
echo "--- agent log"
cat "$DEMO/agent.log"
