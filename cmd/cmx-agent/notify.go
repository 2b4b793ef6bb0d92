package main

import (
	"log/slog"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifier speaks systemd's notify protocol (sd_notify). Outside a Type=notify service
// NOTIFY_SOCKET is unset and every call does nothing.
type notifier struct {
	log  *slog.Logger
	last string // the last STATUS= sent
}

func (n *notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn("cannot notify the service manager", "state", state, "err", err)
	}
}

func (n *notifier) ready(status string) {
	n.last = status
	n.send(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// reloading follows systemd 253's notify-reload rule (MONOTONIC_USEC with RELOADING=1); older
// versions ignore the extra field.
func (n *notifier) reloading() {
	n.send(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec())
}

func (n *notifier) stopping() { n.send(daemon.SdNotifyStopping) }

func (n *notifier) status(status string) {
	if status == n.last {
		return
	}
	n.last = status
	n.send("STATUS=" + status)
}

// stepWatchdog is the test pause point in the main loop just before a watchdog ping: blocking there
// stands for a hung main loop, which the service manager must kill.
const stepWatchdog = "watchdog"
