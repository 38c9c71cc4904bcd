#!/usr/bin/env bash
# Installs logagent as a systemd service:
#   /usr/local/bin/logagent, /etc/logagent/agent.yaml (packaging/agent.yaml, only if absent),
#   /var/lib/logagent (data_dir), /etc/systemd/system/logagent.service.
#
#   scripts/install.sh [--binary PATH]     # default: builds target/release/logagent
#   DESTDIR=/tmp/root scripts/install.sh   # stage into a directory instead of /
#
# It does not start the service; it prints the commands to do so.
set -euo pipefail
cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
BIN=
while [ $# -gt 0 ]; do
  case $1 in
    --binary) BIN=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then
  cargo build --release --locked --bin logagent >&2
  BIN=target/release/logagent
fi
[ -x "$BIN" ] || { echo "error: $BIN is not an executable" >&2; exit 1; }

install -d "$DESTDIR/usr/local/bin" "$DESTDIR/etc/logagent" "$DESTDIR/etc/systemd/system"
install -d -m 0750 "$DESTDIR/var/lib/logagent"
install -m 0755 "$BIN" "$DESTDIR/usr/local/bin/logagent"
install -m 0644 scripts/logagent.service "$DESTDIR/etc/systemd/system/logagent.service"
if [ -e "$DESTDIR/etc/logagent/agent.yaml" ]; then
  echo "kept existing $DESTDIR/etc/logagent/agent.yaml"
else
  # The packaged config (not the demo's agent.yaml): its CHANGE_ME placeholders
  # (kafka.brokers, etcd.endpoints) keep the agent from starting until they are filled in.
  install -m 0640 packaging/agent.yaml "$DESTDIR/etc/logagent/agent.yaml"
  echo "wrote $DESTDIR/etc/logagent/agent.yaml (replace every CHANGE_ME: kafka.brokers, etcd.endpoints)"
fi
echo "installed $("$DESTDIR/usr/local/bin/logagent" --version)"
if [ -z "$DESTDIR" ]; then
  echo "next: logagent check-config -c /etc/logagent/agent.yaml && systemctl daemon-reload && systemctl enable --now logagent"
fi
