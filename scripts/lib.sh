# Shared by scripts/*.sh: installs what the project needs, once per machine.
#
# - Apache Kafka 4.x (KRaft) from its Maven Central jars, through scripts/kafka.sh, into
#   $LOGAGENT_CACHE/kafka-<version>/libs (~43 MB, about 10 s the first time); a Java
#   runtime and Maven from Debian if missing.
# - etcd (Debian's etcd-server) for the central-config tests.
# Sets KAFKA_SH (the harness) and KAFKA_LIBS.

LOGAGENT_CACHE=${LOGAGENT_CACHE:-$HOME/.cache/logagent}
export LOGAGENT_CACHE
KAFKA_SH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka.sh"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

ensure_kafka() {
  KAFKA_LIBS=$(bash "$KAFKA_SH" libs)
  export KAFKA_LIBS
}

ensure_apt() { # ensure_apt COMMAND PACKAGE...
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  log "installing $* from Debian"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >&2
}

ensure_tools() {
  ensure_apt etcd etcd-server
  ensure_apt etcdctl etcd-client
  ensure_apt openssl openssl
  # The rotation and lifecycle tests run the real logrotate (in /usr/sbin, which a
  # non-root PATH may lack).
  [ -x /usr/sbin/logrotate ] || ensure_apt /usr/sbin/logrotate logrotate
  ensure_apt xz xz-utils # an xz-compressed rotation in tests/identity.rs
  ensure_apt python3 python3-minimal # free ports in scripts/kafka.sh
  # A hung file system in tests/hung_mount.rs: FUSE through Debian's python3-fusepy.
  /usr/bin/python3 -c 'import fusepy' 2>/dev/null || ensure_apt_pkg python3-fusepy
  ensure_kafka
}

# Prints the Markdown table of the rows the scenario runner appended to $1.
print_reliability_table() {
  echo
  echo "| scenario | files | lines written | missing | duplicated | duplicate bound |"
  echo "|---|---:|---:|---:|---:|---|"
  sort "$1"
}

# The peer agents for the benchmark: syslog-ng (+ its Kafka module) from Debian, and
# rsyslog + rsyslog-kafka unpacked privately into $LOGAGENT_CACHE (the two conflict as
# Debian packages, and neither must replace the system's syslog). Sets RSYSLOG_ROOT.
RSYSLOG_ROOT="$LOGAGENT_CACHE/rsyslog-8.2302"
ensure_peers() {
  if ! command -v syslog-ng >/dev/null 2>&1 && dpkg -s rsyslog >/dev/null 2>&1; then
    # Installing syslog-ng would remove the system's rsyslog: never do that here.
    log "not installing syslog-ng: rsyslog is this machine's syslog daemon (the table says so)"
  else
    ensure_apt syslog-ng syslog-ng-core syslog-ng-mod-rdkafka
    if ! ls /usr/lib/syslog-ng/*/libkafka.so >/dev/null 2>&1; then
      ensure_apt_pkg syslog-ng-mod-rdkafka
    fi
  fi
  for p in libestr0 libfastjson4 liblognorm5; do ensure_apt_pkg "$p"; done
  if [ ! -x "$RSYSLOG_ROOT/usr/sbin/rsyslogd" ]; then
    log "unpacking rsyslog + rsyslog-kafka into $RSYSLOG_ROOT"
    local dl; dl=$(mktemp -d)
    (cd "$dl" && chmod 777 . && apt-get download rsyslog rsyslog-kafka >&2)
    mkdir -p "$RSYSLOG_ROOT"
    for d in "$dl"/*.deb; do dpkg-deb -x "$d" "$RSYSLOG_ROOT"; done
    rm -rf "$dl"
  fi
}

ensure_apt_pkg() { # ensure_apt_pkg PACKAGE: installed unless dpkg knows it already
  dpkg -s "$1" >/dev/null 2>&1 && return 0
  log "installing $1 from Debian"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >&2
}
