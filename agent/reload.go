package agent

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/cmx-agent/cmx-agent/apply"
	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
)

// ErrRestartNeeded is returned by Reload for a configuration that changes [broker], [kaa] or
// [agent]: those shape the connection, the topics and the database, so the caller restarts the
// agent with the new configuration (which reconnects) instead.
var ErrRestartNeeded = errors.New("restart needed")

// local is the Agent's part that runs beside the MQTT session: workers, drift watching, reload.
type local struct {
	reloadMu sync.Mutex // one Reload at a time

	// Guarded by Agent.mu.
	running bool
	runCtx  context.Context
	wg      sync.WaitGroup
	drift   *driftWatcher
}

// lifecycle is an endpoint's part for drift checks and for stopping its worker.
type lifecycle struct {
	drift    chan struct{} // a drift check is due
	quit     chan struct{} // closed to stop the worker after the offer in progress
	done     chan struct{} // closed when the worker has returned
	stopFlag chan struct{} // same as quit, for stopping() without a select on quit
	// lastDrift is the hash of the drifted output last reported, so a report is logged once per
	// change. Worker only.
	lastDrift string
}

func (l *lifecycle) stopping() bool {
	select {
	case <-l.stopFlag:
		return true
	default:
		return false
	}
}

func (l *lifecycle) pokeDrift() {
	select {
	case l.drift <- struct{}{}:
	default:
	}
}

func (a *Agent) newEndpoint(ec config.Endpoint) *endpoint {
	quit := make(chan struct{})
	return &endpoint{
		key:    ec.Key(),
		cfg:    ec,
		prefix: cmx.Prefix(a.cfg.Kaa.AppVersion, a.cfg.Kaa.Extension, ec.Token),
		wake:   make(chan struct{}, 1),
		lifecycle: lifecycle{
			drift:    make(chan struct{}, 1),
			quit:     quit,
			stopFlag: quit,
			done:     make(chan struct{}),
		},
	}
}

// startLocal starts the drift watcher and makes Reload start workers; it returns the session.
func (a *Agent) startLocal(ctx context.Context) *session {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.running, a.runCtx = true, ctx
	a.drift = newDriftWatcher(a)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.drift.run(ctx)
	}()
	return a.sess // made by New, so Connection and Status have it before Run
}

// stopLocal waits for the workers and the drift watcher once ctx has ended.
func (a *Agent) stopLocal() {
	a.mu.Lock()
	a.running = false
	a.mu.Unlock()
	a.wg.Wait()
}

// startWorker removes what a crash left beside ep's output and starts its worker, which first
// finishes a pending apply and then checks the output for drift.
func (a *Agent) startWorker(ctx context.Context, ep *endpoint) {
	if n, err := apply.RemoveTemps(ep.cfg.Output); err != nil {
		a.log.Warn("cannot remove temporary files", "endpoint", ep.key, "err", err)
	} else if n > 0 {
		a.log.Info("removed temporary files left by a crash", "endpoint", ep.key, "count", n)
	}
	a.mu.Lock()
	if !a.running {
		a.mu.Unlock()
		return
	}
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		defer close(ep.done)
		a.worker(ctx, ep)
	}()
	ep.poke()
	ep.pokeDrift()
}

// Reload switches to cfg without dropping the MQTT session: endpoints that are new are subscribed
// and asked for their configuration, removed ones are unsubscribed and their workers stopped, and
// changed ones get their new options after the apply in progress (and are asked for their
// configuration again, so a new template or output takes effect). The files of removed endpoints and
// their stored state stay.
//
// A cfg that changes [broker], [kaa] or [agent] is not applied: Reload returns an error wrapping
// ErrRestartNeeded. Reload may be called before or during Run.
func (a *Agent) Reload(cfg *config.Config) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	var changedSections []string
	if !reflect.DeepEqual(a.cfg.Broker, cfg.Broker) {
		changedSections = append(changedSections, "[broker]")
	}
	if a.cfg.Kaa != cfg.Kaa {
		changedSections = append(changedSections, "[kaa]")
	}
	if a.cfg.Agent != cfg.Agent {
		changedSections = append(changedSections, "[agent]")
	}
	if a.cfg.Kaa.Dialect == config.DialectCMP7 && sharedFilterChanged(a.cfg.Endpoints, cfg.Endpoints) {
		// A token's default configuration subscribes P/config/json/#, which also carries its named
		// ones (whose own filters are then left out, or the broker would deliver twice). Adding or
		// removing that default changes the whole token's subscriptions: reconnect with new ones.
		changedSections = append(changedSections, "the default configuration of a token with named ones")
	}
	if len(changedSections) > 0 {
		return fmt.Errorf("%v changed: %w", changedSections, ErrRestartNeeded)
	}

	want := map[string]config.Endpoint{}
	for _, ec := range cfg.Endpoints {
		want[ec.Key()] = ec
	}
	var removed, changed, added []*endpoint
	for _, ep := range a.endpointList() {
		a.mu.RLock()
		cur := ep.cfg
		a.mu.RUnlock()
		n, ok := want[ep.key]
		switch {
		case !ok:
			removed = append(removed, ep)
		case !reflect.DeepEqual(cur, n):
			changed = append(changed, ep)
		}
	}
	for _, ec := range cfg.Endpoints {
		a.mu.RLock()
		_, ok := a.endpoints[ec.Key()]
		a.mu.RUnlock()
		if !ok {
			added = append(added, a.newEndpoint(ec))
		}
	}

	// A worker finishes the offer in progress (its hook included) before it stops: an endpoint's
	// options never change in the middle of an apply.
	for _, ep := range append(append([]*endpoint{}, removed...), changed...) {
		ep.stopWorker()
	}
	a.mu.Lock()
	for _, ep := range removed {
		delete(a.endpoints, ep.key)
		ep.answered.Store(true) // so a pending request repeat leaves it alone
	}
	for _, ep := range changed {
		n := want[ep.key]
		if n.Output != ep.cfg.Output {
			a.log.Warn("endpoint output moved; the old file stays", "endpoint", ep.key, "old", ep.cfg.Output, "new", n.Output)
		}
		ep.setOptions(n)
		ep.resetLifecycle()
	}
	for _, ep := range added {
		a.endpoints[ep.key] = ep
	}
	a.reindex()
	a.cfg.Endpoints = cfg.Endpoints
	running, ctx, sess, drift := a.running, a.runCtx, a.sess, a.drift
	a.mu.Unlock()

	for _, ep := range removed {
		a.log.Info("endpoint removed", "endpoint", ep.key)
	}
	for _, ep := range changed {
		a.log.Info("endpoint changed", "endpoint", ep.key)
	}
	for _, ep := range added {
		a.log.Info("endpoint added", "endpoint", ep.key, "output", ep.cfg.Output)
	}
	if !running {
		return nil
	}
	for _, ep := range append(append([]*endpoint{}, changed...), added...) {
		a.startWorker(ctx, ep)
	}
	if drift != nil {
		drift.kick()
	}
	if sess != nil {
		if err := sess.unsubscribe(removed); err != nil {
			a.log.Warn("cannot unsubscribe removed endpoints", "err", err)
		}
		if err := sess.addEndpoints(ctx, append(append([]*endpoint{}, added...), changed...)); err != nil {
			// The next connect subscribes every endpoint; a failure here is not lost for long.
			a.log.Warn("cannot subscribe new endpoints now", "err", err)
		}
	}
	return nil
}

// stopWorker makes ep's worker return after the offer in progress and waits for it.
func (ep *endpoint) stopWorker() {
	select {
	case <-ep.quit:
	default:
		close(ep.quit)
	}
	<-ep.done
}

// setOptions takes n's options. Token and name are the endpoint's key and stay as they are, so
// readers of those (message routing) need no lock. Called with Agent.mu held and the worker stopped.
func (ep *endpoint) setOptions(n config.Endpoint) {
	c := &ep.cfg
	c.Output, c.Mode, c.Owner, c.Group = n.Output, n.Mode, n.Owner, n.Group
	c.Template, c.Validate, c.Hook, c.HookTimeout, c.OnDrift = n.Template, n.Validate, n.Hook, n.HookTimeout, n.OnDrift
}

func (ep *endpoint) resetLifecycle() {
	quit := make(chan struct{})
	ep.quit, ep.stopFlag, ep.done = quit, quit, make(chan struct{})
}

// addEndpoints subscribes eps' topics on the live connection and asks for their configuration. When
// not connected it does nothing: the next connect subscribes every endpoint.
func (s *session) addEndpoints(ctx context.Context, eps []*endpoint) error {
	gen, _, client := s.current()
	if client == nil || len(eps) == 0 {
		return nil
	}
	return s.subscribeAndRequest(ctx, gen, client, eps)
}

// unsubscribe drops the topics of removed endpoints that no remaining endpoint needs.
func (s *session) unsubscribe(removed []*endpoint) error {
	_, _, client := s.current()
	if client == nil || len(removed) == 0 {
		return nil
	}
	keep := map[string]bool{}
	for _, ep := range s.a.endpointList() {
		for _, f := range s.a.dia.filters(ep) {
			keep[f] = true
		}
	}
	var drop []string
	for _, ep := range removed {
		for _, f := range s.a.dia.filters(ep) {
			if !keep[f] {
				drop = append(drop, f)
				keep[f] = true // once
			}
		}
	}
	if len(drop) == 0 {
		return nil
	}
	tok := client.Unsubscribe(drop...)
	if !tok.WaitTimeout(30 * time.Second) {
		return fmt.Errorf("unsubscribe %v: no UNSUBACK within 30s", drop)
	}
	return tok.Error()
}

// sharedFilterChanged reports whether a token with named cmp7 configurations gained or lost its
// default configuration between old and new.
func sharedFilterChanged(old, new []config.Endpoint) bool {
	shape := func(eps []config.Endpoint) (defaults, named map[string]bool) {
		defaults, named = map[string]bool{}, map[string]bool{}
		for _, ec := range eps {
			if ec.Name == "" {
				defaults[ec.Token] = true
			} else {
				named[ec.Token] = true
			}
		}
		return defaults, named
	}
	od, on := shape(old)
	nd, nn := shape(new)
	for tok := range on {
		if od[tok] != nd[tok] {
			return true
		}
	}
	for tok := range nn {
		if od[tok] != nd[tok] {
			return true
		}
	}
	return false
}
