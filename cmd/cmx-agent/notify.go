package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/cmx-agent/cmx-agent/agent"
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

// supervise is the main loop while the agent runs: it reports status changes, feeds the watchdog
// only while the agent is healthy, and says STOPPING=1 as soon as a stop is asked for. It returns
// what Run returned.
func supervise(ctx context.Context, a *agent.Agent, n *notifier, changes <-chan struct{}, pause func(string), runDone <-chan error) error {
	var tick <-chan time.Time
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("watchdog settings ignored", "err", err)
	}
	if interval > 0 {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		tick = t.C
		n.log.Debug("watchdog enabled", "interval", interval)
	}
	stopping := ctx.Done()
	for {
		select {
		case <-stopping:
			n.stopping()
			stopping = nil
		case err := <-runDone:
			return err
		case <-changes:
			if st, err := a.Status(); err == nil {
				n.status(agent.StatusLine(st))
			}
		case <-tick:
			pause(stepWatchdog)
			hctx, cancel := context.WithTimeout(ctx, interval/4)
			err := a.Healthy(hctx)
			cancel()
			if err != nil {
				n.log.Error("unhealthy; not feeding the watchdog", "err", err)
				continue
			}
			n.send(daemon.SdNotifyWatchdog)
		}
	}
}

// stepWatchdog is the test pause point in the main loop just before a watchdog ping: blocking there
// stands for a hung main loop, which the service manager must kill.
const stepWatchdog = "watchdog"
