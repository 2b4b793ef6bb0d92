package engine

import (
	"reflect"
	"slices"

	"github.com/cmx-agent/cmx-agent/config"
)

// Changes is what a reload asks of the transport: subscribe the new filters (before unsubscribing
// the old ones, so nothing is missed in between), then have the engine request the configuration
// of the added endpoints.
type Changes struct {
	Subscribe   []string
	Unsubscribe []string
	Request     []string // endpoint keys
}

func (ep *endpoint) removed() bool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.quit
}

// Reload switches to a new list of endpoints: new ones start, removed ones stop after the apply in
// progress, changed ones take their options between applies (and apply the stored configuration
// again when what shapes the file changed). The files of removed endpoints and their stored state
// stay. It may be called before or during Run.
func (e *Engine) Reload(endpoints []config.Endpoint) Changes {
	before := e.Filters()
	want := map[string]config.Endpoint{}
	for _, ec := range endpoints {
		want[ec.Key()] = ec
	}
	var removed, changed, added []*endpoint
	e.mu.Lock()
	for key, ep := range e.eps {
		n, ok := want[key]
		switch {
		case !ok:
			removed = append(removed, ep)
			delete(e.eps, key)
		case !reflect.DeepEqual(ep.config(), n):
			changed = append(changed, ep)
		}
	}
	for _, ec := range endpoints {
		if _, ok := e.eps[ec.Key()]; !ok {
			ep := e.newEndpoint(ec)
			e.eps[ep.key] = ep
			added = append(added, ep)
		}
	}
	e.reindex()
	running, ctx, drift := e.running, e.runCtx, e.drift
	e.mu.Unlock()

	for _, ep := range removed {
		ep.stop()
		ep.answered.Store(true) // a repeat of its request leaves it alone
		e.log.Info("endpoint removed", "endpoint", ep.key)
	}
	for _, ep := range changed {
		n := want[ep.key]
		if !running {
			ep.mu.Lock()
			ep.cfg = n
			ep.mu.Unlock()
		} else {
			ep.post(evOptions{cfg: n})
		}
		e.log.Info("endpoint changed", "endpoint", ep.key)
	}
	var ch Changes
	for _, ep := range added {
		e.log.Info("endpoint added", "endpoint", ep.key, "output", ep.config().Output)
		if running {
			e.startEndpoint(ctx, ep)
		}
		ch.Request = append(ch.Request, ep.key)
	}
	if drift != nil {
		drift.kick()
	}
	after := e.Filters()
	for _, f := range after {
		if !slices.Contains(before, f) {
			ch.Subscribe = append(ch.Subscribe, f)
		}
	}
	for _, f := range before {
		if !slices.Contains(after, f) {
			ch.Unsubscribe = append(ch.Unsubscribe, f)
		}
	}
	return ch
}
