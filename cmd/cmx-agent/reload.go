package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/config"
)

// configDebounce gathers the several events of one save (editors write, rename, chmod) into one
// reload.
const configDebounce = 300 * time.Millisecond

// serve runs the agent on cfg until ctx ends. SIGHUP, or a change of the configuration file, loads
// the file again: a valid one is applied live (agent.Reload) or, when [broker], [kaa] or [agent]
// changed, by restarting the agent inside the process; an invalid one is logged, problem by
// problem, and the agent keeps running on the configuration it has.
func serve(ctx context.Context, cfg *config.Config, opts agent.Options, log *slog.Logger) int {
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
	for {
		next, code := runUntilRestart(ctx, cfg, &current, reload, opts, log)
		if next == nil {
			return code
		}
		cfg = next
	}
}

// runUntilRestart runs one agent until ctx ends (next nil, the exit code) or a reload needs a new
// agent (next is its configuration). current holds the configuration file's bytes last loaded.
func runUntilRestart(ctx context.Context, cfg *config.Config, current *[]byte, reload chan string, opts agent.Options, log *slog.Logger) (next *config.Config, code int) {
	a, err := agent.New(cfg, opts)
	if err != nil {
		log.Error("cannot start", "err", err)
		return nil, 1
	}
	defer a.Close()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	for {
		select {
		case err := <-done:
			if err != nil {
				log.Error("agent stopped", "err", err)
				return nil, 1
			}
			return nil, 0
		case why := <-reload:
			data, err := os.ReadFile(cfg.Path)
			if why != "SIGHUP" && err == nil && bytes.Equal(data, *current) {
				continue // touched, not changed
			}
			nc, err := config.Load(cfg.Path)
			if err != nil {
				logProblems(log, cfg.Path, err)
				continue
			}
			*current = data
			err = a.Reload(nc)
			switch {
			case errors.Is(err, agent.ErrRestartNeeded):
				log.Info("configuration changed; restarting the agent to apply it", "trigger", why, "reason", err)
				cancel()
				if err := <-done; err != nil {
					log.Error("agent stopped", "err", err)
				}
				return nc, 0
			case err != nil:
				log.Error("cannot reload the configuration; keeping the running one", "trigger", why, "err", err)
			default:
				cfg = nc
				log.Info("configuration reloaded", "trigger", why, "endpoints", len(nc.Endpoints))
			}
		}
	}
}

func trigger(c chan string, why string) {
	select {
	case c <- why:
	default:
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
