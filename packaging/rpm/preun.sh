# cmx-agent %preun: $1 is 0 on removal (stop and disable), 1 or more on upgrade (nothing).
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
	if [ -d /run/systemd/system ]; then
		systemctl disable --now cmx-agent.service >/dev/null 2>&1 || :
	else
		systemctl disable cmx-agent.service >/dev/null 2>&1 || :
	fi
fi
