# cmx-agent %pre: the user exists before the files that belong to its group are installed.
if command -v systemd-sysusers >/dev/null 2>&1; then
	echo 'u cmx-agent - "cmx-agent configuration agent" /var/lib/cmx-agent /usr/sbin/nologin' | systemd-sysusers - || :
elif ! getent passwd cmx-agent >/dev/null; then
	useradd --system --user-group --home-dir /var/lib/cmx-agent --no-create-home \
		--shell /sbin/nologin --comment "cmx-agent configuration agent" cmx-agent || :
fi
