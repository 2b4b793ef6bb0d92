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
	m.announce(a, cfg, first)
	tick, interval, stopTick := m.watchdogTicker()
	defer stopTick()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	r := &agentRun{m: m, a: a, path: cfg.Path, reloadIn: m.reload, reloaded: make(chan reloadResult, 1)}
	defer r.reloads.Wait() // before a.Close: a reload in progress still uses the agent
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
			r.statusChanged()
		case <-r.statusDue:
			r.sendStatus()
		case <-tick:
			r.feedWatchdog(ctx, interval)
		case why := <-r.reloadIn:
			r.startReload(why)
		case res := <-r.reloaded:
			if errors.Is(res.err, agent.ErrRestartNeeded) {
				m.log.Info("configuration changed; restarting the agent to apply it", "trigger", res.why, "reason", res.err)
				cancel()
				if err := <-done; err != nil {
					m.log.Error("agent stopped", "err", err)
				}
				return res.cfg, 0 // READY=1 follows once the new agent is up
			}
			r.reloadDone(res)
		}
	}
}

// announce tells the service manager the agent is ready: once the configuration is loaded, the
// database open and SIGHUP handled (its default action would kill the process); not waiting for
// the broker, since a gateway must boot offline. After a restart by a reload, READY=1 ends that
// reload's RELOADING=1.
func (m *mainLoop) announce(a *agent.Agent, cfg *config.Config, first bool) {
	status := "starting"
	if st, err := a.Status(); err == nil {
		status = agent.StatusLine(st)
	}
	m.n.ready(status)
	if first {
		m.log.Info("cmx-agent started", "version", version, "config", cfg.Path, "endpoints", len(cfg.Endpoints), "dialect", cfg.Kaa.Dialect)
	}
}

// watchdogTicker ticks at half the service manager's watchdog interval; tick is nil when the
// watchdog is off. stop releases the ticker.
func (m *mainLoop) watchdogTicker() (tick <-chan time.Time, interval time.Duration, stop func()) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		m.log.Warn("watchdog settings ignored", "err", err)
	}
	if interval <= 0 {
		return nil, 0, func() {}
	}
	t := time.NewTicker(interval / 2)
	return t.C, interval, t.Stop
}

// agentRun is the state of the main loop around one agent.
type agentRun struct {
	m    *mainLoop
	a    *agent.Agent
	path string // the configuration file, read again at each reload

	statusDue  <-chan time.Time // when STATUS= is sent next; nil when nothing changed
	lastStatus time.Time

	reloadIn chan string       // the reload triggers; nil while a reload is in progress
	reloaded chan reloadResult // the outcome of the reload in progress
	reloads  sync.WaitGroup
}

// statusChanged schedules a STATUS= update. Status reads every endpoint: during a burst of
// applies (a fan-out to 1,000 endpoints) it is computed at most once per statusEvery, the last
// change included.
func (r *agentRun) statusChanged() {
	if r.statusDue == nil {
		r.statusDue = time.After(time.Until(r.lastStatus.Add(statusEvery)))
	}
}

// sendStatus sends the agent's status line as STATUS=.
func (r *agentRun) sendStatus() {
	r.statusDue, r.lastStatus = nil, time.Now()
	if st, err := r.a.Status(); err == nil {
		r.m.n.status(agent.StatusLine(st))
	}
}

// feedWatchdog feeds the service manager's watchdog only while the agent is healthy, so that a
// stuck agent is restarted.
func (r *agentRun) feedWatchdog(ctx context.Context, interval time.Duration) {
	r.m.opts.Pause(stepWatchdog)
	hctx, hcancel := context.WithTimeout(ctx, interval/4)
	err := r.a.Healthy(hctx)
	hcancel()
	if err != nil {
		r.m.log.Error("unhealthy; not feeding the watchdog", "err", err)
		return
	}
	r.m.n.send(daemon.SdNotifyWatchdog)
}

// startReload loads the configuration file again, unless only its time changed (SIGHUP always
// loads): an invalid file is logged and the agent keeps its configuration; a valid one goes to
// agent.Reload, which waits for an apply in progress (a hook may take hook_timeout): off the main
// loop, so the watchdog is still fed meanwhile. One reload at a time.
func (r *agentRun) startReload(why string) {
	m := r.m
	data, err := os.ReadFile(r.path)
	if why != "SIGHUP" && err == nil && bytes.Equal(data, m.current) {
		return // touched, not changed
	}
	m.n.reloading()
	// The bytes compared are the bytes parsed: a file changing again meanwhile is the next reload.
	var nc *config.Config
	if err == nil {
		nc, err = config.Parse(r.path, data)
	} else {
		nc, err = config.Load(r.path) // says why the file cannot be read, as at start
	}
	if err != nil {
		logProblems(m.log, r.path, err)
		m.n.send(daemon.SdNotifyReady)
		return
	}
	m.current = data
	logWarnings(m.log, nc)
	r.reloadIn = nil
	r.reloads.Add(1)
	go func() {
		defer r.reloads.Done()
		r.reloaded <- reloadResult{cfg: nc, why: why, err: r.a.Reload(nc)}
	}()
}

// reloadDone takes in a live reload's outcome (one that needs no restart) and ends its
// RELOADING=1.
func (r *agentRun) reloadDone(res reloadResult) {
	r.reloadIn = r.m.reload
	if res.err != nil {
		r.m.log.Error("cannot reload the configuration; keeping the running one", "trigger", res.why, "err", res.err)
	} else {
		r.m.log.Info("configuration reloaded", "trigger", res.why, "endpoints", len(res.cfg.Endpoints))
	}
	r.m.n.send(daemon.SdNotifyReady)
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
