package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/cmx-agent/cmx-agent/apply"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/store"
)

// Drift timing: events for one output are gathered for DriftDebounce before a check (an editor
// saves in several steps); folders that could not be watched are retried every DriftRetry.
const (
	DriftDebounce = 200 * time.Millisecond
	DriftRetry    = 500 * time.Millisecond
)

// driftWatcher notices local changes to the outputs. It watches each output's folder, not the file:
// an atomic replacement (the agent's own, or an editor's) puts a new inode under the name, and a
// watch on the old inode would see nothing more. It only schedules checks; the check itself runs in
// the endpoint's worker, between applies, so the agent's own writes are never mistaken for drift.
type driftWatcher struct {
	e     *Engine
	kickC chan struct{}

	mu      sync.Mutex
	watched map[string]bool // folders with a live watch
	missing map[string]bool // folders that could not be watched, already checked once
	timers  map[*endpoint]clock.Timer
}

func newDriftWatcher(e *Engine) *driftWatcher {
	return &driftWatcher{e: e, kickC: make(chan struct{}, 1), watched: map[string]bool{}, missing: map[string]bool{}, timers: map[*endpoint]clock.Timer{}}
}

// kick makes the watcher look for folders to watch now (after a reload, or a write that created a
// folder) rather than at the next retry.
func (d *driftWatcher) kick() {
	select {
	case d.kickC <- struct{}{}:
	default:
	}
}

// outputs maps each endpoint's output to it, and lists the folders to watch.
func (d *driftWatcher) outputs() (map[string][]*endpoint, map[string]bool) {
	byOut := map[string][]*endpoint{}
	dirs := map[string]bool{}
	for _, ep := range d.e.endpointList() {
		c := ep.config()
		if c.OnDrift == config.OnDriftIgnore {
			continue
		}
		byOut[c.Output] = append(byOut[c.Output], ep)
		dirs[filepath.Dir(c.Output)] = true
	}
	return byOut, dirs
}

func (d *driftWatcher) run(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		d.e.log.Error("cannot watch outputs for local changes; drift is not detected", "err", err)
		return
	}
	defer w.Close()
	defer func() {
		d.mu.Lock()
		for _, t := range d.timers {
			t.Stop()
		}
		d.mu.Unlock()
	}()
	// Folders that could not be watched (nothing applied yet, or removed) are looked for again on a
	// timer that runs only while there are such folders: an idle agent with all its folders watched
	// wakes for nothing.
	var retry clock.Timer
	var retryC <-chan time.Time
	resync := func() map[string][]*endpoint {
		byOut, _ := d.outputs()
		if d.sync(w) {
			if retry == nil {
				retry = d.e.opt.Clock.NewTimer(DriftRetry)
			} else {
				retry.Reset(DriftRetry)
			}
			retryC = retry.C()
		} else {
			retryC = nil
		}
		return byOut
	}
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	byOut := resync()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.kickC:
			byOut = resync()
		case <-retryC:
			byOut = resync()
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			// Overflow: events were lost; check everything.
			d.e.log.Warn("watching outputs", "err", err)
			for _, eps := range byOut {
				for _, ep := range eps {
					d.schedule(ep)
				}
			}
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if eps, mine := byOut[ev.Name]; mine {
				for _, ep := range eps {
					d.schedule(ep)
				}
				continue
			}
			if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
				d.folderGone(w, ev.Name, byOut)
			}
		}
	}
}

// sync adds a watch for every output folder that has none, and drops watches no output needs. A
// folder watched anew gets a check of its outputs: they may have changed while nobody looked. It
// reports whether some folder could not be watched.
func (d *driftWatcher) sync(w *fsnotify.Watcher) (missing bool) {
	byOut, dirs := d.outputs()
	d.mu.Lock()
	defer d.mu.Unlock()
	for dir := range d.watched {
		if !dirs[dir] {
			_ = w.Remove(dir)
			delete(d.watched, dir)
		}
	}
	for dir := range dirs {
		if d.watched[dir] {
			continue
		}
		if err := w.Add(dir); err != nil {
			// Not there yet (nothing applied) or gone: retried. Its outputs are checked once, for
			// a folder removed before its watch was in place.
			if !d.missing[dir] {
				d.missing[dir] = true
				d.scheduleDir(dir, byOut)
			}
			continue
		}
		delete(d.missing, dir)
		d.watched[dir] = true
		d.scheduleDir(dir, byOut)
	}
	for dir := range d.missing {
		if !dirs[dir] {
			delete(d.missing, dir)
		}
	}
	return len(d.missing) > 0
}

// scheduleDir schedules a check of every output in dir. Called with d.mu held.
func (d *driftWatcher) scheduleDir(dir string, byOut map[string][]*endpoint) {
	for out, eps := range byOut {
		if filepath.Dir(out) == dir {
			for _, ep := range eps {
				d.scheduleLocked(ep)
			}
		}
	}
}

// folderGone handles the removal or renaming of a watched folder: its watch is dropped (a renamed
// folder's watch would follow it elsewhere), its outputs are checked (a repair recreates the folder)
// and the watch is set again once the folder is back.
func (d *driftWatcher) folderGone(w *fsnotify.Watcher, dir string, byOut map[string][]*endpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.watched[dir] {
		return
	}
	_ = w.Remove(dir)
	delete(d.watched, dir)
	d.scheduleDir(dir, byOut)
}

func (d *driftWatcher) schedule(ep *endpoint) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.scheduleLocked(ep)
}

// scheduleLocked (re)starts ep's debounce timer.
func (d *driftWatcher) scheduleLocked(ep *endpoint) {
	if t, ok := d.timers[ep]; ok {
		t.Reset(DriftDebounce)
		return
	}
	d.timers[ep] = d.e.opt.Clock.AfterFunc(DriftDebounce, func() { ep.post(evDrift{}) })
}

// checkDrift compares ep's output with what was applied and, per on_drift, reports or repairs it.
// It runs in ep's machine when idle, so it never sees an apply half done or a result not yet
// committed. No hook runs for a repair: the
// device already runs with the applied configuration; only the file was changed under it.
func (e *Engine) checkDrift(m *machine) {
	ep := m.ep
	cfg := ep.config()
	if cfg.OnDrift == config.OnDriftIgnore {
		return
	}
	// The output is hashed as it is read and the applied bytes are read only for a repair: a check
	// follows every write of the agent's own, and a configuration of a few MiB must not cost its
	// size twice over in memory each time.
	st := m.state()
	if st.AppliedHash == "" {
		return // nothing applied yet: the file is not the agent's
	}
	sum, err := e.outputSum(ep.key, cfg.Output)
	what := "edited"
	var notRegular *apply.NotRegularError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		what, sum = "deleted", store.Hash(nil)
	case errors.As(err, &notRegular):
		// Not the agent's file, whatever it leads to: HashFile followed no link and waited on no
		// FIFO, and the repair's rename replaces the thing itself.
		what, sum = "replaced by a "+notRegular.Kind, notRegular.Kind
	case err != nil:
		e.log.Error("cannot read output for the drift check", "endpoint", ep.key, "err", err)
		return
	case sum == st.AppliedHash:
		m.lastDrift = ""
		return
	}
	driftKey := what + sum
	if cfg.OnDrift == config.OnDriftReport {
		if m.lastDrift != driftKey {
			e.log.Warn("output changed locally; on_drift = report, left as it is", "endpoint", ep.key, "output", cfg.Output, "change", what, "applied_id", st.AppliedText)
			m.lastDrift = driftKey
		}
		return
	}
	body, have, err := e.appliedOutput(ep.key, cfg)
	if err != nil {
		e.log.Error("cannot read applied configuration for the drift check", "endpoint", ep.key, "err", err)
		return
	}
	if !have {
		e.log.Error("output changed locally but no copy of the applied configuration is stored; it is repaired by the next configuration", "endpoint", ep.key, "change", what)
		return
	}
	own, err := apply.LookupOwner(cfg.Owner, cfg.Group)
	if err == nil {
		err = apply.WriteFile(cfg.Output, body, apply.Options{Perm: fs.FileMode(cfg.Mode)})
	}
	if err == nil {
		err = own.Chown(cfg.Output)
	}
	if err != nil {
		e.log.Error("output changed locally and cannot be repaired", "endpoint", ep.key, "change", what, "err", apply.Describe(err))
		return
	}
	ep.stats.driftRepairs.Add(1)
	e.log.Warn("output changed locally; repaired", "endpoint", ep.key, "output", cfg.Output, "change", what, "applied_id", st.AppliedText)
	if what == "deleted" {
		e.kickDrift() // the folder may have been recreated
	}
}

// outputSum is the hash of the file at output, or, when its size is not that of the applied bytes,
// that size ("size N"): a change found without reading the file. The check runs on the endpoint's
// goroutine, where its pushes wait, and a huge file put at the output (a misdirected log, a copied
// image) would otherwise be read whole, for minutes, at every change.
func (e *Engine) outputSum(key, output string) (string, error) {
	var (
		n    int
		have bool
	)
	// A sealed configuration's stored bytes are not the output's: their size tells nothing.
	if err := e.store.View(func(tx *store.Tx) error { n, have = tx.BodyLen(key); have = have && !tx.BodySealed(key); return nil }); err == nil && have {
		if fi, err := apply.LstatRegular(output); err == nil && fi.Size() != int64(n) {
			return fmt.Sprintf("size %d", fi.Size()), nil
		}
	}
	return apply.HashFile(output)
}

// scheduleDrift checks ep a debounce from now, on the watcher's timer for ep, so that this check
// and one the watcher schedules for the same events are one.
func (e *Engine) scheduleDrift(ep *endpoint) {
	e.mu.RLock()
	d := e.drift
	e.mu.RUnlock()
	if d == nil {
		e.opt.Clock.AfterFunc(DriftDebounce, func() { ep.post(evDrift{}) })
		return
	}
	d.schedule(ep)
}

// kickDriftFor is kickDrift after a write to output: it does nothing when output's folder is
// watched already, so a burst of applies (a fan-out to 1,000 endpoints) does not make the watcher
// rebuild its view of every endpoint once per write.
func (e *Engine) kickDriftFor(output string) {
	e.mu.RLock()
	d := e.drift
	e.mu.RUnlock()
	if d == nil {
		return
	}
	d.mu.Lock()
	watched := d.watched[filepath.Dir(output)]
	d.mu.Unlock()
	if !watched {
		d.kick()
	}
}

// kickDrift makes the drift watcher look for new output folders now.
func (e *Engine) kickDrift() {
	e.mu.RLock()
	d := e.drift
	e.mu.RUnlock()
	if d != nil {
		d.kick()
	}
}
