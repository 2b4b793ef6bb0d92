# cmx-agent %post: $1 is 1 on first install, 2 or more on upgrade.
chgrp cmx-agent /etc/cmx-agent/agent.toml 2>/dev/null || :
chmod 0640 /etc/cmx-agent/agent.toml 2>/dev/null || :
if [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
	if [ -d /run/systemd/system ]; then
		systemctl enable --now cmx-agent.service >/dev/null 2>&1 || :
	else
		systemctl enable cmx-agent.service >/dev/null 2>&1 || :
	fi
fi
if ! cmx-agent check --config /etc/cmx-agent/agent.toml >/dev/null 2>&1; then
	# The packaged file's placeholder token is refused: the service waits until it is configured.
	echo "cmx-agent: not configured yet; write this gateway's configuration, then start it:" >&2
	echo "  cmx-agent init --force --config /etc/cmx-agent/agent.toml --token TOKEN --server URL --app-version APP" >&2
	echo "  systemctl restart cmx-agent" >&2
fi
