#!/usr/bin/env bash
# Apache Kafka 4.x (KRaft, no ZooKeeper) from its Maven Central jars: the one broker
# harness of the tests (tests/common/kafka.rs runs `kafka.sh run`), the demo and the
# benchmark.
#
#   kafka.sh libs          fetch the pinned jars once (scripts/kafka/pom.xml) into
#                          $LOGAGENT_CACHE/kafka-<version>/libs; print that directory
#   kafka.sh run DIR       write DIR/server.properties, format DIR/data, exec the broker
#                          in the foreground (its log on stdout)
#   kafka.sh start DIR     `run` in the background; wait until it listens; print the
#                          bootstrap address (127.0.0.1:PORT); the pid is in DIR/pid
#   kafka.sh stop DIR      SIGTERM the broker started by `start`, SIGKILL after 20 s
#   kafka.sh tool CLASS..  one of Kafka's tools (TopicCommand, ConsoleConsumer, ...)
#
# Settings for `run` / `start` (environment; all optional but the ports):
#   KAFKA_PORT          the PLAINTEXT listener (free port; default: one picked)
#   KAFKA_CTRL_PORT     the controller listener (default: one picked)
#   KAFKA_NODE_ID       1
#   KAFKA_VOTERS        controller.quorum.voters (default: this node alone)
#   KAFKA_ADVERTISED_PORT  advertised port of the PLAINTEXT listener (a relay's)
#   KAFKA_CLUSTER_ID    the id every node of one cluster is formatted with
#   KAFKA_EXTRA_PROPS   a file appended to server.properties (later keys win: listeners,
#                       security maps, SASL/SSL settings, replication factors)
#   KAFKA_FORMAT_ARGS   extra arguments to `StorageTool format` (e.g. --add-scram ...)
#   KAFKA_HEAP          -Xmx of the broker (default 512m)
#   KAFKA_SECURE=1      also listeners SASL_PLAINTEXT, SASL_SSL (PLAIN, SCRAM-SHA-256/512),
#                       SSL (client certificate required) and OAUTH (SASL_PLAINTEXT with
#                       OAUTHBEARER, RS256 JWTs checked against DIR/tls/jwks.json), on
#                       KAFKA_SASL_PORT, KAFKA_SASL_SSL_PORT, KAFKA_SSL_PORT,
#                       KAFKA_OAUTH_PORT (picked if unset; all written to DIR/ports);
#                       certificates made by `kafka.sh certs` in
#                       DIR/tls; users alice/alice-secret (PLAIN and SCRAM) and
#                       admin/admin-secret (super user); ACLs by the StandardAuthorizer
#                       (a resource without ACLs is open to every user)
#   kafka.sh certs DIR  a test CA, a broker certificate for 127.0.0.1, a client
#                       certificate (CN=client), an expired client certificate, a
#                       second CA that signed nothing here, and a JWT signing key
#                       (jwt.key) with its JWKS (jwks.json), in DIR (openssl)
#
# Decisions, each checked by running it (the recipe in shared/notes was not run):
# - one combined broker+controller node with a static quorum (controller.quorum.voters),
#   formatted without --standalone (4.1 refuses it with static voters);
# - logging through log4j2 with the slf4j 1.x binding (Kafka 4.1 uses slf4j-api 1.7);
# - java.io.tmpdir inside DIR (snappy/zstd unpack native code there; /tmp may be noexec);
# - no internal-topic replication above 1 on one node (consumer groups would hang).
set -euo pipefail

KAFKA_VERSION=4.1.1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOGAGENT_CACHE=${LOGAGENT_CACHE:-$HOME/.cache/logagent}
KAFKA_ROOT="$LOGAGENT_CACHE/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_ROOT/libs"

say() { printf '[%s] kafka.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

ensure_java() {
  if command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; then
    return 0
  fi
  say "installing a Java runtime and Maven from Debian"
  local sudo=; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq default-jre-headless maven >&2
}

libs() {
  if [ -f "$LIBS/.complete" ]; then
    return 0
  fi
  ensure_java
  mkdir -p "$KAFKA_ROOT"
  # Several brokers may start at once on a cold cache: one fetches, the others wait.
  exec 9>"$KAFKA_ROOT/.lock"
  flock 9
  if [ -f "$LIBS/.complete" ]; then
    exec 9>&-
    return 0
  fi
  say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS (once)"
  local tmp="$KAFKA_ROOT/libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  mvn -q -B -f "$here/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >&2
  # The broker logs nothing without the slf4j 1.x binding: fail here, not in a test.
  ls "$tmp" | grep -q '^log4j-slf4j-impl-' || { say "no log4j-slf4j-impl among the jars"; exit 1; }
  touch "$tmp/.complete"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  exec 9>&-
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# log4j2 config: WARN and above, plus the "Kafka Server started" line.
write_log4j() { # write_log4j FILE TARGET
  cat >"$1" <<EOF
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.target = $2
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = OUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = info
EOF
}

certs() {
  local d=$1
  [ -f "$d/.complete" ] && return 0
  mkdir -p "$d"
  (
    cd "$d"
    q() { "$@" >/dev/null 2>&1 || { echo "kafka.sh certs: failed: $*" >&2; exit 1; }; }
    q openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=logagent-test-ca" \
      -keyout ca.key -out ca.crt
    q openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=some-other-ca" \
      -keyout other-ca.key -out other-ca.crt
    q openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >server.ext
    q openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -sha256 -extfile server.ext -out server.crt
    # Kafka parses PEM keys as PKCS#8; the leaf certificate comes first.
    q openssl pkcs8 -topk8 -nocrypt -in server.key -out server.pk8
    cat server.pk8 server.crt ca.crt >server-keystore.pem
    q openssl req -newkey rsa:2048 -nodes -subj "/CN=client" -keyout client.key -out client.csr
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    q openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -sha256 -extfile client.ext -out client.crt
    # An expired client certificate: `openssl ca` is the one that takes explicit dates.
    mkdir -p ca-db && : >ca-db/index.txt && echo 1000 >ca-db/serial
    printf '%s\n' '[ca]' 'default_ca = test' '[test]' "dir = $PWD/ca-db" \
      'database = $dir/index.txt' 'serial = $dir/serial' 'new_certs_dir = $dir' \
      'default_md = sha256' 'policy = any' 'copy_extensions = none' '[any]' \
      'commonName = supplied' >ca.cnf
    q openssl req -newkey rsa:2048 -nodes -subj "/CN=client" -keyout expired.key -out expired.csr
    q openssl ca -batch -config ca.cnf -cert ca.crt -keyfile ca.key -in expired.csr \
      -startdate 20200101000000Z -enddate 20200201000000Z -out expired.crt
    # OAUTHBEARER: an RSA key that signs test tokens, and its public half as a JWKS.
    q openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out jwt.key
    openssl rsa -in jwt.key -noout -modulus | cut -d= -f2 | python3 -c '
import base64, json, sys
n = bytes.fromhex(sys.stdin.read().strip())
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
print(json.dumps({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
                            "n": b(n), "e": b((65537).to_bytes(3, "big"))}]}))' >jwks.json
    touch .complete
  )
}

# Properties of the secure listeners (KAFKA_SECURE=1), appended to server.properties.
secure_props() { # secure_props DIR PORT CTRL ADV SASL SASL_SSL SSL OAUTH
  local dir=$1 port=$2 ctrl=$3 adv=$4 sasl=$5 sasl_ssl=$6 ssl=$7 oauth=$8 l
  printf '%s\n' \
    "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl,SASL_PLAINTEXT://127.0.0.1:$sasl,SASL_SSL://127.0.0.1:$sasl_ssl,SSL://127.0.0.1:$ssl,OAUTH://127.0.0.1:$oauth" \
    "advertised.listeners=PLAINTEXT://127.0.0.1:$adv,SASL_PLAINTEXT://127.0.0.1:$sasl,SASL_SSL://127.0.0.1:$sasl_ssl,SSL://127.0.0.1:$ssl,OAUTH://127.0.0.1:$oauth" \
    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,OAUTH:SASL_PLAINTEXT" \
    "listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER" \
    "listener.name.oauth.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;" \
    "listener.name.oauth.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler" \
    "listener.name.oauth.oauthbearer.sasl.oauthbearer.jwks.endpoint.url=file://$dir/tls/jwks.json" \
    "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512" \
    "ssl.keystore.type=PEM" \
    "ssl.keystore.location=$dir/tls/server-keystore.pem" \
    "ssl.truststore.type=PEM" \
    "ssl.truststore.location=$dir/tls/ca.crt" \
    "listener.name.ssl.ssl.client.auth=required" \
    'ssl.principal.mapping.rules=RULE:^CN=([^,]+).*$/$1/,DEFAULT' \
    "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" \
    "super.users=User:ANONYMOUS;User:admin" \
    "allow.everyone.if.no.acl.found=true"
  for l in sasl_plaintext sasl_ssl; do
    printf '%s\n' \
      "listener.name.$l.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_admin=\"admin-secret\" user_alice=\"alice-secret\";" \
      "listener.name.$l.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;" \
      "listener.name.$l.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
  done
}

tool() {
  libs
  local tdir="$KAFKA_ROOT/tools"
  mkdir -p "$tdir"
  [ -f "$tdir/log4j2.properties" ] || write_log4j "$tdir/log4j2.properties" SYSTEM_ERR
  exec java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j2.configurationFile="$tdir/log4j2.properties" -cp "$LIBS/*" "$@"
}

run() {
  local dir=$1
  libs
  mkdir -p "$dir/tmp"
  dir=$(cd "$dir" && pwd)
  local port=${KAFKA_PORT:-$(free_port)}
  local ctrl=${KAFKA_CTRL_PORT:-$(free_port)}
  local id=${KAFKA_NODE_ID:-1}
  local voters=${KAFKA_VOTERS:-$id@127.0.0.1:$ctrl}
  local adv=${KAFKA_ADVERTISED_PORT:-$port}
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=PLAINTEXT://127.0.0.1:$adv
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
EOF
  local format_args=${KAFKA_FORMAT_ARGS:-}
  if [ "${KAFKA_SECURE:-}" = 1 ]; then
    local sasl=${KAFKA_SASL_PORT:-$(free_port)} sasl_ssl=${KAFKA_SASL_SSL_PORT:-$(free_port)}
    local ssl=${KAFKA_SSL_PORT:-$(free_port)} oauth=${KAFKA_OAUTH_PORT:-$(free_port)}
    certs "$dir/tls"
    secure_props "$dir" "$port" "$ctrl" "$adv" "$sasl" "$sasl_ssl" "$ssl" "$oauth" >>"$dir/server.properties"
    printf 'PLAINTEXT=%s\nSASL_PLAINTEXT=%s\nSASL_SSL=%s\nSSL=%s\nOAUTH=%s\n' \
      "$port" "$sasl" "$sasl_ssl" "$ssl" "$oauth" >"$dir/ports"
    # Kafka 4 reads a JWKS only from URLs allowed by this system property.
    KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:-} -Dorg.apache.kafka.sasl.oauthbearer.allowed.urls=file://$dir/tls/jwks.json"
    format_args="$format_args --add-scram SCRAM-SHA-256=[name=alice,password=alice-secret]"
    format_args="$format_args --add-scram SCRAM-SHA-512=[name=alice,password=alice-secret]"
  fi
  if [ -n "${KAFKA_EXTRA_PROPS:-}" ]; then
    cat "$KAFKA_EXTRA_PROPS" >>"$dir/server.properties"
  fi
  write_log4j "$dir/log4j2.properties" SYSTEM_OUT
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cid=${KAFKA_CLUSTER_ID:-logagent-test-cluster-0}
    # shellcheck disable=SC2086
    java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
      -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIBS/*" \
      kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" \
      $format_args >"$dir/format.out" 2>&1 ||
      { cat "$dir/format.out" >&2; exit 1; }
  fi
  echo "$port" >"$dir/port"
  local java=(java -Xms128m -Xmx"${KAFKA_HEAP:-512m}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Djava.io.tmpdir="$dir/tmp" \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    ${KAFKA_JVM_OPTS:-} -cp "$LIBS/*" kafka.Kafka "$dir/server.properties")
  if [ -z "${KAFKA_SUPERVISE:-}" ]; then
    exec "${java[@]}"
  fi
  # Supervised (the test harness): stay the JVM's parent; on SIGTERM (from the harness,
  # or from the kernel when the test process dies) SIGKILL the JVM, frozen or not, and
  # with KAFKA_SUPERVISE=rm remove DIR.
  set +e
  # The trap is in place before the JVM exists: a SIGTERM at any moment kills it.
  JPID=
  SUP_DIR=$dir
  trap '[ -n "$JPID" ] && kill -KILL "$JPID" 2>/dev/null; [ -n "$JPID" ] && wait "$JPID" 2>/dev/null; [ "$KAFKA_SUPERVISE" = rm ] && rm -rf "$SUP_DIR"; exit 0' TERM INT
  # setpriv: the JVM itself dies with its parent (this shell), even by SIGKILL.
  setpriv --pdeathsig KILL "${java[@]}" >>"$dir/server.out" 2>&1 &
  JPID=$!
  echo "$JPID" >"$dir/java.pid"
  wait "$JPID"
}

start() {
  local dir=$1
  libs
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  export KAFKA_PORT=${KAFKA_PORT:-$(free_port)}
  rm -f "$dir/pid"
  ("$here/kafka.sh" run "$dir" >"$dir/server.out" 2>&1 & echo $! >"$dir/pid")
  # The broker binds its (fixed) port only once it is unfenced and ready.
  local i
  for i in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
      echo "127.0.0.1:$KAFKA_PORT"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      say "the broker exited during start-up; its log:"
      tail -30 "$dir/server.out" >&2
      exit 1
    fi
    sleep 0.1
  done
  say "the broker did not listen on 127.0.0.1:$KAFKA_PORT within 60 s"
  stop "$dir"
  exit 1
}

stop() {
  local dir=$1 pid i
  [ -f "$dir/pid" ] || return 0
  pid=$(cat "$dir/pid")
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/pid"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "${1:-}" in
  libs) libs; echo "$LIBS" ;;
  run) shift; run "$@" ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  tool) shift; tool "$@" ;;
  certs) shift; certs "$@" ;;
  *) sed -n '2,42p' "$0" >&2; exit 2 ;;
esac
