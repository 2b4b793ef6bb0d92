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
# The shipped file holds the placeholder token: check refuses it (exit 2) and says what to do.
rc=0
cmx-agent check --config /etc/cmx-agent/agent.toml >/tmp/check.out 2>&1 || rc=$?
[ $rc = 2 ] && grep -q 'run cmx-agent init' /tmp/check.out || fail "check of the shipped agent.toml (placeholder token): exit $rc, $(cat /tmp/check.out)"
# What an operator types: the man pages and the shell completion, as installed.
[ "$(man -w cmx-agent 2>/dev/null)" = /usr/share/man/man1/cmx-agent.1.gz ] || fail "man -w cmx-agent: $(man -w cmx-agent 2>&1)"
man -P cat cmx-agent 2>/dev/null | grep -q "cmx-agent bundle" || fail "man cmx-agent does not show the page"
man -P cat cmxctl 2>/dev/null | grep -q "cmxctl push" || fail "man cmxctl does not show the page"
man -P cat 5 cmx-agent.toml 2>/dev/null | grep -q "password_file" || fail "man 5 cmx-agent.toml does not show the page"
for cmd in cmx-agent cmxctl; do
	[ -f /usr/share/zsh/vendor-completions/_$cmd ] || fail "no zsh completion for $cmd"
	if [ -f /usr/share/bash-completion/bash_completion ]; then
		# bash-completion loads a command's script on first use, by the command's name.
		bash -c "source /usr/share/bash-completion/bash_completion; _completion_loader $cmd; complete -p $cmd" 2>&1 | grep -q "_${cmd//-/_} $cmd\$" ||
			fail "bash-completion does not load the completion of $cmd"
	else
		[ -f /usr/share/bash-completion/completions/$cmd ] || fail "no bash completion for $cmd"
	fi
done
echo "dpkg-test: man cmx-agent, man cmxctl, man 5 cmx-agent.toml and the completions work"
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
