# cmx-agent %postun: restart on upgrade ($1 >= 1). rpm has no purge: the state in
# /var/lib/cmx-agent stays after removal; delete it by hand if it is no longer wanted.
if [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null 2>&1 || :
	if [ "$1" -ge 1 ]; then
		systemctl try-restart cmx-agent.service >/dev/null 2>&1 || :
	fi
fi
