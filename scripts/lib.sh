# Shared by scripts/*.sh: installs what the project needs, once per machine.
#
# - tansu (a Kafka-protocol broker, from crates.io) into $LOGAGENT_CACHE/tansu; building
#   it takes 15-20 minutes on 2 cores, so it is never rebuilt when present.
# - etcd (Debian's etcd-server) for the central-config tests.
# Sets TANSU_BIN and puts it on PATH.

LOGAGENT_CACHE=${LOGAGENT_CACHE:-$HOME/.cache/logagent}
TANSU_VERSION=0.6.0
TANSU_ROOT="$LOGAGENT_CACHE/tansu-$TANSU_VERSION"
export TANSU_BIN="$TANSU_ROOT/bin/tansu"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

ensure_tansu() {
  if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version >/dev/null 2>&1; then
    return 0
  fi
  log "installing tansu $TANSU_VERSION into $TANSU_ROOT (one time, 15-20 minutes on 2 cores)"
  mkdir -p "$TANSU_ROOT"
  cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore,libsql --root "$TANSU_ROOT" >&2
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
  ensure_tansu
  export PATH="$TANSU_ROOT/bin:$PATH"
}

# Prints the Markdown table of the rows the scenario runner appended to $1.
print_reliability_table() {
  echo
  echo "| scenario | files | lines written | missing | duplicated | duplicate bound |"
  echo "|---|---:|---:|---:|---:|---|"
  sort "$1"
}
