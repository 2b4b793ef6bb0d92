package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/fsnotify/fsnotify"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/config"
)

// configDebounce gathers the several events of one save (editors write, rename, chmod) into one
// reload.
const configDebounce = 300 * time.Millisecond

// serve runs the agent on cfg until ctx ends; it is the main loop of the process. It reports to the
// service manager (READY, STATUS on every change, STOPPING as soon as a stop is asked for, WATCHDOG
// only while the agent is healthy). SIGHUP, or a change of the configuration file, loads the file
// again: a valid one is applied live (agent.Reload) or, when [broker], [kaa] or [agent] changed, by
// restarting the agent inside the process; an invalid one is logged, problem by problem, and the
// agent keeps running on the configuration it has. RELOADING=1 and READY=1 frame each reload.
func serve(ctx context.Context, cfg *config.Config, opts agent.Options, log *slog.Logger, n *notifier, changes <-chan struct{}) int {
	reload := make(chan string, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				trigger(reload, "SIGHUP")
			}
		}
	}()
	current, _ := os.ReadFile(cfg.Path)
	go watchConfig(ctx, cfg.Path, reload, log)
	m := &mainLoop{log: log, opts: opts, n: n, changes: changes, reload: reload, current: current}
	for first := true; ; first = false {
		next, code := m.runUntilRestart(ctx, cfg, first)
		if next == nil {
			return code
		}
		cfg = next
	}
}

// statusEvery bounds how often STATUS= is recomputed and sent.
const statusEvery = 500 * time.Millisecond

type mainLoop struct {
	log     *slog.Logger
	opts    agent.Options
	n       *notifier
	changes <-chan struct{}
	reload  chan string
	current []byte // the configuration file's bytes last loaded
	stopped bool   // STOPPING=1 was sent
}

// runUntilRestart runs one agent until ctx ends (next nil, the exit code) or a reload needs a new
// agent (next is its configuration).
func (m *mainLoop) runUntilRestart(ctx context.Context, cfg *config.Config, first bool) (next *config.Config, code int) {
	a, err := agent.New(cfg, m.opts)
	if err != nil {
		m.log.Error("cannot start", "err", err)
		return nil, 1
	}
	defer a.Close()
	// Ready once the configuration is loaded, the database open and SIGHUP handled (its default
	// action would kill the process); not waiting for the broker, since a gateway must boot offline.
	status := "starting"
	if st, err := a.Status(); err == nil {
		status = agent.StatusLine(st)
	}
	if first {
		m.n.ready(status)
		m.log.Info("cmx-agent started", "version", version, "config", cfg.Path, "endpoints", len(cfg.Endpoints), "dialect", cfg.Kaa.Dialect)
	} else {
		m.n.ready(status) // ends the RELOADING=1 of the reload that restarted the agent
	}

	var tick <-chan time.Time
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		m.log.Warn("watchdog settings ignored", "err", err)
	}
	if interval > 0 {
		t := time.NewTicker(interval / 2)
		defer t.Stop()
		tick = t.C
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	var reloads sync.WaitGroup
	defer reloads.Wait() // before a.Close: a reload in progress still uses the agent
	reloaded := make(chan reloadResult, 1)
	reloadIn := m.reload
	var (
		statusDue  <-chan time.Time
		lastStatus time.Time
	)
	stopping := ctx.Done()
	if m.stopped {
		stopping = nil
	}
	for {
		select {
		case <-stopping:
			m.n.stopping()
			m.stopped, stopping = true, nil
		case err := <-done:
			if err != nil {
				m.log.Error("agent stopped", "err", err)
				return nil, 1
			}
			return nil, 0
		case <-m.changes:
			// Status reads every endpoint: during a burst of applies (a fan-out to 1,000
			// endpoints) it is computed at most once per statusEvery, the last change included.
			if statusDue == nil {
				statusDue = time.After(time.Until(lastStatus.Add(statusEvery)))
			}
		case <-statusDue:
			statusDue, lastStatus = nil, time.Now()
			if st, err := a.Status(); err == nil {
				m.n.status(agent.StatusLine(st))
			}
		case <-tick:
			m.opts.Pause(stepWatchdog)
			hctx, hcancel := context.WithTimeout(ctx, interval/4)
			err := a.Healthy(hctx)
			hcancel()
			if err != nil {
				m.log.Error("unhealthy; not feeding the watchdog", "err", err)
				continue
			}
			m.n.send(daemon.SdNotifyWatchdog)
		case why := <-reloadIn:
			data, err := os.ReadFile(cfg.Path)
			if why != "SIGHUP" && err == nil && bytes.Equal(data, m.current) {
				continue // touched, not changed
			}
			m.n.reloading()
			nc, err := config.Load(cfg.Path)
			if err != nil {
				logProblems(m.log, cfg.Path, err)
				m.n.send(daemon.SdNotifyReady)
				continue
			}
			m.current = data
			logWarnings(m.log, nc)
			// Reload waits for an apply in progress (a hook may take hook_timeout): off the main
			// loop, so the watchdog is still fed meanwhile. One reload at a time.
			reloadIn = nil
			reloads.Add(1)
			go func() {
				defer reloads.Done()
				reloaded <- reloadResult{cfg: nc, why: why, err: a.Reload(nc)}
			}()
		case r := <-reloaded:
			reloadIn = m.reload
			switch {
			case errors.Is(r.err, agent.ErrRestartNeeded):
				m.log.Info("configuration changed; restarting the agent to apply it", "trigger", r.why, "reason", r.err)
				cancel()
				if err := <-done; err != nil {
					m.log.Error("agent stopped", "err", err)
				}
				return r.cfg, 0 // READY=1 follows once the new agent is up
			case r.err != nil:
				m.log.Error("cannot reload the configuration; keeping the running one", "trigger", r.why, "err", r.err)
			default:
				cfg = r.cfg
				m.log.Info("configuration reloaded", "trigger", r.why, "endpoints", len(r.cfg.Endpoints))
			}
			m.n.send(daemon.SdNotifyReady)
		}
	}
}

type reloadResult struct {
	cfg *config.Config
	why string
	err error
}

func trigger(c chan string, why string) {
	select {
	case c <- why:
	default:
	}
}

// logWarnings logs what check would warn about a valid configuration, one line each.
func logWarnings(log *slog.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings {
		log.Warn("configuration warning", "problem", w.String())
	}
}

func logProblems(log *slog.Logger, path string, err error) {
	var probs config.Problems
	if errors.As(err, &probs) {
		for _, p := range probs {
			log.Error("configuration invalid; keeping the running one", "problem", p.String())
		}
		return
	}
	log.Error("configuration invalid; keeping the running one", "config", path, "err", err)
}

// watchConfig triggers a reload when the configuration file changes. It watches the folder, not the
// file: editors and configuration management replace the file with a rename, which a watch on the
// file itself would not survive.
func watchConfig(ctx context.Context, path string, reload chan string, log *slog.Logger) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Warn("cannot watch the configuration file; reload with SIGHUP", "err", err)
		return
	}
	defer w.Close()
	dir := filepath.Dir(path)
	watching := w.Add(dir) == nil
	if !watching {
		log.Warn("cannot watch the configuration folder; retrying (SIGHUP reloads meanwhile)", "dir", dir)
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			if !watching && w.Add(dir) == nil {
				watching = true
				debounce.Reset(configDebounce)
			}
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Name == dir && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
				_ = w.Remove(dir)
				watching = false
			}
			if ev.Name == path {
				debounce.Reset(configDebounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			log.Warn("watching the configuration file", "err", err)
		case <-debounce.C:
			trigger(reload, "file changed")
		}
	}
}
