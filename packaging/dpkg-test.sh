#!/usr/bin/env bash
# Installs, upgrades, removes and purges the .deb with dpkg inside a private mount namespace over an
# overlay of /, so the host is left as it was. Root only.
#   packaging/dpkg-test.sh OLD.deb NEW.deb
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "dpkg-test: needs root" >&2; exit 2; }
[ $# = 2 ] || { echo "usage: $0 OLD.deb NEW.deb" >&2; exit 2; }

if [ -z "${CMX_DPKG_TEST_NS:-}" ]; then
	work=$(mktemp -d /var/tmp/cmx-dpkg-test.XXXXXX)
	trap 'rm -rf "$work"' EXIT
	CMX_DPKG_TEST_NS="$work" unshare --mount --propagation private --fork "$0" "$(realpath "$1")" "$(realpath "$2")"
	exit $?
fi

work=$CMX_DPKG_TEST_NS
mkdir -p "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
mount -t proc proc "$work/root/proc"
mount -t tmpfs tmpfs "$work/root/tmp"
mount -t tmpfs tmpfs "$work/root/run"   # no /run/systemd/system: the scripts must skip systemd
cp "$1" "$work/root/tmp/old.deb"
cp "$2" "$work/root/tmp/new.deb"

chroot "$work/root" /bin/bash -euo pipefail <<'IN'
fail() { echo "FAIL: $*" >&2; exit 1; }
dpkg -i /tmp/old.deb >/tmp/log 2>&1 || { cat /tmp/log; fail "dpkg -i old"; }
getent passwd cmx-agent >/dev/null || fail "no user cmx-agent after install"
[ "$(stat -c '%a %U %G' /etc/cmx-agent/agent.toml)" = "640 root cmx-agent" ] || fail "agent.toml mode: $(stat -c '%a %U %G' /etc/cmx-agent/agent.toml)"
[ -L /etc/systemd/system/multi-user.target.wants/cmx-agent.service ] || fail "not enabled after install"
old=$(cmx-agent version)
echo "# operator's change" >> /etc/cmx-agent/agent.toml
dpkg -i /tmp/new.deb >/tmp/log 2>&1 || { cat /tmp/log; fail "dpkg -i new (upgrade)"; }
new=$(cmx-agent version)
[ "$old" != "$new" ] || fail "version unchanged after upgrade: $new"
grep -q "operator's change" /etc/cmx-agent/agent.toml || fail "upgrade replaced the modified agent.toml"
cmx-agent check --config /etc/cmx-agent/agent.toml >/dev/null || fail "shipped agent.toml does not check"
mkdir -p /var/lib/cmx-agent/out && echo state > /var/lib/cmx-agent/agent.db
dpkg -r cmx-agent >/tmp/log 2>&1 || { cat /tmp/log; fail "dpkg -r"; }
[ ! -e /usr/bin/cmx-agent ] || fail "binary left after remove"
[ -e /etc/cmx-agent/agent.toml ] || fail "remove deleted the configuration"
[ -e /var/lib/cmx-agent/agent.db ] || fail "remove deleted the state"
dpkg -P cmx-agent >/tmp/log 2>&1 || { cat /tmp/log; fail "dpkg -P"; }
[ ! -e /etc/cmx-agent/agent.toml ] || fail "purge left the configuration"
[ ! -e /var/lib/cmx-agent ] || fail "purge left the state"
echo "dpkg-test: install, upgrade (modified agent.toml kept), remove, purge: ok ($old -> $new)"
IN
