#!/usr/bin/env bash
# Checks the packages of scripts/package.sh on this machine (root, or sudo):
#   .deb: installed with dpkg; the user, data directory, config file, man page and
#         completions are there; the packaged config has no demo address and
#         check-config refuses it naming its placeholders (it loads once they are
#         filled in); the installed binary, run as the logagent user with
#         an edited /etc/logagent/agent.yaml, ships a file's lines to real Apache Kafka
#         over SASL_SSL with SCRAM-SHA-512 (the CA in /etc/logagent, the password in a
#         file only the logagent user reads) and stops cleanly on SIGTERM with its
#         offsets on disk; a newer
#         package installed over it keeps the edited config and the offsets; purged.
#   .rpm: its file list and scripts (rpm -qlp / --scripts), and the config file
#         marked %config(noreplace).
#
#   scripts/check-packages.sh DEB_V1 DEB_V2 RPM
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ $# -eq 3 ] || { sed -n '2,13p' "$0"; exit 2; }
DEB1=$(realpath "$1") DEB2=$(realpath "$2") RPM=$(realpath "$3")
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
fail() { echo "check-packages: FAIL: $*" >&2; exit 1; }
ok() { echo "check-packages: ok: $*"; }

if dpkg -s logagent >/dev/null 2>&1; then
  fail "a logagent package is installed already; not touching it"
fi
work=$(mktemp -d /tmp/logagent-pkg.XXXXXX)
agent_pid=
cleanup() {
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null || true
  bash scripts/kafka.sh stop "$work/kafka" 2>/dev/null || true
  $SUDO rm -f /etc/logagent/kafka-password /etc/logagent/kafka-ca.crt
  $SUDO dpkg --purge logagent >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
chmod 0755 "$work"

# --- the .deb, installed ------------------------------------------------------------
$SUDO dpkg -i "$DEB1" >/dev/null
for f in /usr/bin/logagent /lib/systemd/system/logagent.service /etc/logagent/agent.yaml \
  /usr/share/man/man1/logagent.1.gz /usr/share/bash-completion/completions/logagent \
  /usr/share/zsh/vendor-completions/_logagent /usr/share/fish/vendor_completions.d/logagent.fish; do
  [ -e "$f" ] || fail "$f is missing after dpkg -i"
done
getent passwd logagent >/dev/null || fail "no logagent user"
[ "$(stat -c %U /var/lib/logagent)" = logagent ] || fail "/var/lib/logagent is not owned by logagent"
grep -q '^User=logagent$' /lib/systemd/system/logagent.service || fail "the unit does not run as logagent"
grep -q '^ExecStart=/usr/bin/logagent ' /lib/systemd/system/logagent.service || fail "the unit's ExecStart"
zcat /usr/share/man/man1/logagent.1.gz | grep -q '^\.TH logagent' || fail "the man page is no man page"
for page in $(zcat /usr/share/man/man1/logagent.1.gz | grep -o 'logagent\\-[a-z\\-]*(1)' | sed 's/\\//g; s/(1)//' | sort -u); do
  [ -e "/usr/share/man/man1/$page.1.gz" ] || fail "logagent(1) names $page(1), which is not installed"
done
grep -q 'check-config' /usr/share/bash-completion/completions/logagent || fail "bash completion"
# The packaged config is packaging/agent.yaml, not the demo's: no demo address, and
# placeholders the agent refuses by name, so nobody starts it unedited by mistake.
# (Read as root: the file is root:logagent 0640.)
! $SUDO grep -n '127\.0\.0\.1' /etc/logagent/agent.yaml || fail "the packaged agent.yaml holds a demo address"
rc=0
out=$($SUDO /usr/bin/logagent check-config -c /etc/logagent/agent.yaml 2>&1) || rc=$?
[ "$rc" -eq 2 ] || fail "check-config on the packaged agent.yaml exited $rc, want 2 (placeholders): $out"
grep -q 'kafka.brokers, etcd.endpoints still hold the placeholder CHANGE_ME' <<<"$out" ||
  fail "check-config does not name the packaged placeholders: $out"
$SUDO cat /etc/logagent/agent.yaml | sed 's/CHANGE_ME/kafka1.example.com/' >"$work/filled.yaml"
/usr/bin/logagent check-config -c "$work/filled.yaml" >/dev/null ||
  fail "the packaged agent.yaml, placeholders filled in, does not load"
ok "dpkg -i: binary, unit (User=logagent), config (placeholders named by check-config), user, /var/lib/logagent, man page, completions"

# --- run as the service would: the logagent user, an edited config, real Kafka ------
# The broker's SASL_SSL listener (SCRAM users made at format time, certificates by
# openssl); topics are created and read back through its PLAINTEXT admin listener.
KAFKA_SECURE=1 bash scripts/kafka.sh start "$work/kafka" >/dev/null
port=$(sed -n 's/^PLAINTEXT=//p' "$work/kafka/ports")
sasl_ssl=$(sed -n 's/^SASL_SSL=//p' "$work/kafka/ports")
bash scripts/kafka.sh tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
  --create --topic pkg --partitions 1 >/dev/null
$SUDO install -m 0644 "$work/kafka/tls/ca.crt" /etc/logagent/kafka-ca.crt
echo alice-secret | $SUDO tee /etc/logagent/kafka-password >/dev/null
$SUDO chown logagent:logagent /etc/logagent/kafka-password
$SUDO chmod 0600 /etc/logagent/kafka-password
for i in $(seq 1 100); do echo "pkg line $i"; done >"$work/app.log"
chmod 0644 "$work/app.log"
cat <<EOF | $SUDO tee /etc/logagent/agent.yaml >/dev/null
# edited by check-packages.sh: must survive the upgrade as it is
kafka:
  brokers: ["127.0.0.1:$sasl_ssl"]
  security:
    protocol: sasl_ssl
    sasl_mechanism: SCRAM-SHA-512
    username: alice
    password_file: /etc/logagent/kafka-password
    ca_file: /etc/logagent/kafka-ca.crt
agent:
  data_dir: /var/lib/logagent
  hostname: pkgtest
collect:
  - {path: $work/app.log, topic: pkg, from: beginning}
EOF
cp /etc/logagent/agent.yaml "$work/edited.yaml"
start_agent() {
  # setpriv execs the agent itself (runuser would stay as its parent and turn a
  # clean SIGTERM exit into 143).
  $SUDO setpriv --reuid logagent --regid logagent --init-groups \
    /usr/bin/logagent run -c /etc/logagent/agent.yaml 2>>"$work/agent.log" &
  agent_pid=$!
}
stop_agent() {
  $SUDO kill -TERM "$agent_pid"
  local rc=0
  wait "$agent_pid" || rc=$?
  agent_pid=
  [ "$rc" -eq 0 ] || { cat "$work/agent.log" >&2; fail "the agent exited $rc on SIGTERM"; }
}
consume() { # consume N: how many distinct lines the topic's first N records hold
  /usr/bin/logagent consume --brokers "127.0.0.1:$port" --topic pkg --from-beginning \
    --count "$1" --idle-timeout-ms 30000 | awk '{print $NF}' | sort -u | wc -l
}
start_agent
got=$(consume 100)
[ "$got" -eq 100 ] || { cat "$work/agent.log" >&2; fail "$got of 100 lines arrived"; }
stop_agent
$SUDO test -s /var/lib/logagent/registry.json || fail "no offsets in /var/lib/logagent after SIGTERM"
$SUDO grep -q '"offset": *[1-9]' /var/lib/logagent/registry.json || fail "offsets on disk are 0"
ok "run as logagent over SASL_SSL (SCRAM-SHA-512): 100 lines in Kafka, SIGTERM exit 0, offsets in /var/lib/logagent"

# --- upgrade over it -----------------------------------------------------------------
$SUDO dpkg -i --force-confold "$DEB2" >/dev/null
v2=$(dpkg-deb -f "$DEB2" Version)
[ "$(dpkg-query -W -f '${Version}' logagent)" = "$v2" ] || fail "not upgraded to $v2"
cmp -s /etc/logagent/agent.yaml "$work/edited.yaml" || fail "the upgrade changed the edited agent.yaml"
$SUDO test -s /var/lib/logagent/registry.json || fail "the upgrade lost the offsets"
for i in $(seq 101 150); do echo "pkg line $i"; done >>"$work/app.log"
start_agent
got=$(consume 150)
stop_agent
[ "$got" -eq 150 ] || { cat "$work/agent.log" >&2; fail "after the upgrade: $got records, want 150 (resumed, nothing twice)"; }
ok "upgrade to $v2: edited agent.yaml kept, offsets kept, resumed: 150 records, none twice"

$SUDO rm -f /etc/logagent/kafka-password /etc/logagent/kafka-ca.crt
$SUDO dpkg --purge logagent >/dev/null
[ ! -e /usr/bin/logagent ] && ! getent passwd logagent >/dev/null && [ ! -e /var/lib/logagent ] ||
  fail "dpkg --purge left the binary, the user or /var/lib/logagent"
ok "dpkg --purge: binary, user and data directory gone"

# --- the .rpm, listed ------------------------------------------------------------------
files=$(rpm -qlp "$RPM" 2>/dev/null)
for f in /usr/bin/logagent /usr/lib/systemd/system/logagent.service /etc/logagent/agent.yaml \
  /var/lib/logagent /usr/share/man/man1/logagent.1.gz /usr/share/bash-completion/completions/logagent; do
  grep -qx "$f" <<<"$files" || fail "$f is not in $RPM"
done
rpm -qp --configfiles "$RPM" 2>/dev/null | grep -qx /etc/logagent/agent.yaml || fail "agent.yaml is no %config in the rpm"
rpm -qp --scripts "$RPM" 2>/dev/null | grep -q 'useradd --system' || fail "the rpm does not create the logagent user"
ok "rpm -qlp: $(wc -l <<<"$files") files, agent.yaml %config(noreplace), user created in %pre"
