#!/usr/bin/env bash
# Builds the .deb and the .rpm from the portable binary (glibc >= 2.17):
#   target/packages/logagent_<version>_amd64.deb
#   target/packages/logagent-<version>.x86_64.rpm
#
#   scripts/package.sh [--binary PATH] [--version V]
#
# --binary: an already built portable binary (default: scripts/build-portable.sh runs).
# --version: the package version (default: Cargo.toml's); the upgrade test builds a
# second, newer one.
#
# What the packages hold, the same in both:
#   /usr/bin/logagent
#   /lib/systemd/system/logagent.service (/usr/lib/systemd/system in the .rpm)
#   /etc/logagent/agent.yaml: packaging/agent.yaml, a config file kept on upgrade when
#     edited; its CHANGE_ME placeholders (kafka.brokers, etcd.endpoints) must be filled in
#   /usr/share/man/man1/logagent.1.gz, bash / zsh / fish completions
# and on install a `logagent` system user owning /var/lib/logagent (the data_dir).
# The service is enabled on a fresh install but not started: agent.yaml holds
# placeholders until edited (the agent refuses to start with them). An upgrade restarts
# a running agent.
#
# Built with dpkg-deb (always on Debian) and rpmbuild (Debian's `rpm`, installed here
# when missing) from one staged tree; no packaging crate to build first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

BIN=
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
while [ $# -gt 0 ]; do
  case $1 in
    --binary) BIN=$2; shift 2 ;;
    --version) VERSION=$2; shift 2 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
if [ -z "$BIN" ]; then
  BIN=$(bash scripts/build-portable.sh | sed -n 's/^binary: *//p')
fi
[ -x "$BIN" ] || { echo "error: $BIN is not an executable" >&2; exit 1; }
ensure_apt rpmbuild rpm

OUT=target/packages
STAGE=$OUT/stage
rm -rf "$STAGE"
mkdir -p "$OUT"

# One staged tree; the unit's directory differs between the two families.
stage() {
  local root=$1 unitdir=$2
  install -d "$root/usr/bin" "$root/$unitdir" "$root/etc/logagent" \
    "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
    "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
    "$root/usr/share/doc/logagent"
  install -m 0755 "$BIN" "$root/usr/bin/logagent"
  # The packaged unit: /usr/bin, and the logagent user (see docs/operating.md, "Install").
  sed -e 's#/usr/local/bin/logagent#/usr/bin/logagent#' \
    -e 's#^\[Service\]$#[Service]\nUser=logagent\nGroup=logagent\n\# Reads every log file (as root would) without being root; systemd >= 229.\nSupplementaryGroups=adm\nAmbientCapabilities=CAP_DAC_READ_SEARCH\nCapabilityBoundingSet=CAP_DAC_READ_SEARCH#' \
    scripts/logagent.service >"$root/$unitdir/logagent.service"
  chmod 0644 "$root/$unitdir/logagent.service"
  # packaging/agent.yaml, not the demo's agent.yaml: no demo address, and CHANGE_ME
  # placeholders that check-config and run refuse, naming the keys, until filled in.
  install -m 0640 packaging/agent.yaml "$root/etc/logagent/agent.yaml"
  # logagent(1) and a page per subcommand (logagent-run(1), …: SEE ALSO names them).
  "$BIN" man --dir "$root/usr/share/man/man1"
  gzip -9n "$root"/usr/share/man/man1/*.1
  "$BIN" completions bash >"$root/usr/share/bash-completion/completions/logagent"
  "$BIN" completions zsh >"$root/usr/share/zsh/vendor-completions/_logagent"
  "$BIN" completions fish >"$root/usr/share/fish/vendor_completions.d/logagent.fish"
  install -m 0644 README.md "$root/usr/share/doc/logagent/README.md"
  install -d "$root/usr/share/doc/logagent/docs"
  install -m 0644 docs/*.md "$root/usr/share/doc/logagent/docs/"
  cat >"$root/usr/share/doc/logagent/copyright" <<'COPYRIGHT'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: logagent
Files: *
License: MIT OR Apache-2.0
Comment: librdkafka (BSD-2-Clause), zlib and zstd are linked in statically.
COPYRIGHT
}

# Shared by both: the user and the data directory (idempotent: upgrades run it again).
read -r -d '' ADD_USER <<'EOF' || true
if ! getent group logagent >/dev/null; then groupadd --system logagent; fi
if ! getent passwd logagent >/dev/null; then
  useradd --system --gid logagent --home-dir /var/lib/logagent --no-create-home \
    --shell /usr/sbin/nologin --comment "logagent log shipper" logagent
fi
install -d -m 0750 -o logagent -g logagent /var/lib/logagent
chgrp logagent /etc/logagent/agent.yaml 2>/dev/null || true
EOF

# --- .deb ---------------------------------------------------------------------------
DEB=$STAGE/deb
stage "$DEB" lib/systemd/system
install -d "$DEB/DEBIAN"
size_kb=$(du -sk --exclude=DEBIAN "$DEB" | cut -f1)
cat >"$DEB/DEBIAN/control" <<EOF
Package: logagent
Version: $VERSION
Architecture: amd64
Maintainer: logagent developers <logagent@localhost>
Installed-Size: $size_kb
Depends: libc6 (>= 2.17), passwd
Section: admin
Priority: optional
Description: ships log lines to Kafka, at least once
 Follows the log files named in agent.yaml or in etcd and ships each new line
 to Apache Kafka. Offsets are committed only after Kafka acknowledged a line:
 rotation, restarts and Kafka outages lose nothing.
EOF
echo /etc/logagent/agent.yaml >"$DEB/DEBIAN/conffiles"
cat >"$DEB/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
$ADD_USER
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ -z "\$2" ]; then
      systemctl enable logagent.service || true
      echo "logagent: edit /etc/logagent/agent.yaml, then: systemctl start logagent"
    else
      systemctl try-restart logagent.service || true
    fi
  fi
fi
EOF
cat >"$DEB/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop logagent.service || true
  systemctl disable logagent.service || true
fi
EOF
cat >"$DEB/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
  # The ledger of offsets goes with a purge; a plain remove keeps it (and the user).
  rm -rf /var/lib/logagent
  if getent passwd logagent >/dev/null; then userdel logagent || true; fi
  if getent group logagent >/dev/null; then groupdel logagent || true; fi
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
EOF
chmod 0755 "$DEB/DEBIAN/postinst" "$DEB/DEBIAN/prerm" "$DEB/DEBIAN/postrm"
deb_file=$OUT/logagent_${VERSION}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$DEB" "$deb_file" >/dev/null

# --- .rpm ---------------------------------------------------------------------------
RPM=$STAGE/rpm
stage "$RPM/root" usr/lib/systemd/system
rpm_version=${VERSION//-/_}
cat >"$RPM/logagent.spec" <<EOF
%global debug_package %{nil}
%global __os_install_post %{nil}
%define _build_id_links none
Name: logagent
Version: $rpm_version
Release: 1
Summary: ships log lines to Kafka, at least once
License: MIT OR Apache-2.0
BuildArch: x86_64
Requires(pre): shadow-utils
%description
Follows the log files named in agent.yaml or in etcd and ships each new line to
Apache Kafka. Offsets are committed only after Kafka acknowledged a line:
rotation, restarts and Kafka outages lose nothing.
%install
cp -a $PWD/$RPM/root/. %{buildroot}/
%pre
if ! getent group logagent >/dev/null; then groupadd --system logagent; fi
if ! getent passwd logagent >/dev/null; then
  useradd --system --gid logagent --home-dir /var/lib/logagent --no-create-home \
    --shell /sbin/nologin --comment "logagent log shipper" logagent
fi
%post
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  if [ "\$1" = 1 ]; then systemctl enable logagent.service || true; fi
  if [ "\$1" -gt 1 ]; then systemctl try-restart logagent.service || true; fi
fi
%preun
if [ "\$1" = 0 ] && [ -d /run/systemd/system ]; then
  systemctl stop logagent.service || true
  systemctl disable logagent.service || true
fi
%files
%attr(0755,root,root) /usr/bin/logagent
%attr(0644,root,root) /usr/lib/systemd/system/logagent.service
%dir /etc/logagent
%config(noreplace) %attr(0640,root,logagent) /etc/logagent/agent.yaml
%dir %attr(0750,logagent,logagent) /var/lib/logagent
/usr/share/man/man1/logagent*.1.gz
/usr/share/bash-completion/completions/logagent
/usr/share/zsh/vendor-completions/_logagent
/usr/share/fish/vendor_completions.d/logagent.fish
%doc /usr/share/doc/logagent/README.md
%doc /usr/share/doc/logagent/docs
%doc /usr/share/doc/logagent/copyright
EOF
install -d -m 0750 "$RPM/root/var/lib/logagent"
rpmbuild -bb --quiet --nodeps \
  --define "_topdir $PWD/$RPM/top" \
  --define "_rpmdir $PWD/$RPM/out" \
  --define "_build_name_fmt %%{NAME}-%%{VERSION}.%%{ARCH}.rpm" \
  "$RPM/logagent.spec" >&2
rpm_file=$OUT/logagent-${rpm_version}.x86_64.rpm
mv "$RPM/out/logagent-${rpm_version}.x86_64.rpm" "$rpm_file"

echo "deb: $deb_file ($(stat -c %s "$deb_file") bytes)"
echo "rpm: $rpm_file ($(stat -c %s "$rpm_file") bytes)"
