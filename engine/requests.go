package engine

import (
	"sync"
	"time"
)

// connState is the transport's connection as the engine sees it: which generation is live, and
// whether its session is persistent (the broker delivers an unacknowledged QoS 1 message again).
type connState struct {
	mu      sync.Mutex
	gen     uint64 // 0 while offline
	persist bool
	done    chan struct{} // closed when gen ends
}

func (c *connState) persistent() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.persist
}

func (c *connState) current() (uint64, chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen, c.done
}

// Online tells the engine that connection gen is up and subscribed to Filters; persistent says the
// broker keeps its session across a disconnect. The engine asks for the latest configuration of
// every endpoint on it.
func (e *Engine) Online(gen uint64, persistent bool) {
	e.conn.mu.Lock()
	e.conn.gen, e.conn.persist, e.conn.done = gen, persistent, make(chan struct{})
	e.conn.mu.Unlock()
	e.request(gen, e.endpointList())
}

// Offline tells the engine that connection gen has ended: its requests are dropped, and repeats
// scheduled on it stop.
func (e *Engine) Offline(gen uint64) {
	e.conn.mu.Lock()
	if e.conn.gen == gen && gen != 0 {
		e.conn.gen = 0
		close(e.conn.done)
		e.conn.done = nil
	}
	e.conn.mu.Unlock()
	e.out.dropRequests(gen)
}

// Request asks for the latest configuration of the endpoints with these keys on the live
// connection (after a reload has subscribed their topics).
func (e *Engine) Request(keys []string) {
	gen, _ := e.conn.current()
	if gen == 0 {
		return
	}
	var eps []*endpoint
	e.mu.RLock()
	for _, k := range keys {
		if ep := e.eps[k]; ep != nil {
			eps = append(eps, ep)
		}
	}
	e.mu.RUnlock()
	e.request(gen, eps)
}

// Sync asks for the latest configuration of every endpoint now; it returns how many were asked, and
// false while offline.
func (e *Engine) Sync() (int, bool) {
	gen, _ := e.conn.current()
	if gen == 0 {
		return 0, false
	}
	eps := e.endpointList()
	e.log.Info("latest configuration requested on demand", "endpoints", len(eps))
	e.request(gen, eps)
	return len(eps), true
}

// request queues a request for each of eps on connection gen, and repeats it, with a growing
// interval, for those that get no answer: a lost answer must not park an endpoint until the next
// reconnect. Nothing is scheduled once every endpoint has been answered.
func (e *Engine) request(gen uint64, eps []*endpoint) {
	if len(eps) == 0 {
		return
	}
	e.send(gen, eps)
	_, done := e.conn.current()
	if done == nil {
		return
	}
	go func() {
		wait := e.opt.PullTimeout
		for {
			t := time.NewTimer(wait)
			select {
			case <-done:
				t.Stop()
				return
			case <-t.C:
			}
			var again []*endpoint
			for _, ep := range eps {
				if !ep.answered.Load() && !ep.removed() {
					again = append(again, ep)
				}
			}
			if len(again) == 0 {
				return
			}
			if g, _ := e.conn.current(); g != gen {
				return
			}
			e.log.Info("no answer to configuration request; asking again", "endpoints", len(again), "waited", wait)
			e.send(gen, again)
			wait = min(2*wait, 10*time.Minute)
		}
	}()
}

func (e *Engine) send(gen uint64, eps []*endpoint) {
	for _, ep := range eps {
		id := e.nextID()
		topic, payload := e.dia.request(ep, id, e.stateOf(ep))
		ep.answered.Store(false)
		ep.lastRID.Store(id)
		ep.asked.add(id)
		e.out.request(OutMsg{Endpoint: ep.key, Topic: topic, QoS: 1, Payload: payload, Request: true}, gen)
		e.log.Debug("requested latest configuration", "endpoint", ep.key, "topic", topic, "msg_id", id)
	}
}

// noteServer records what the server said in the endpoint's ServerState (for status), logs it, and
// repeats a refused request with backoff. Any usable response ends the backoff.
func (e *Engine) noteServer(m *machine, topic string, n serverNote) error {
	ep := m.ep
	now := e.opt.Now()
	var old ServerState
	if err := e.store.View(func(tx *Tx) error {
		var err error
		old, err = tx.ServerState(ep.key)
		return err
	}); err != nil {
		return err
	}
	st := old
	switch n.kind {
	case noteError:
		st.ErrorCode, st.ErrorReason, st.ErrorAt = n.code, n.reason, now
		st.Errors++
	case noteNone:
		if !st.NoneAssigned {
			st.NoneAssigned, st.NoneAssignedAt = true, now
		}
	case noteConfig:
		st.NoneAssigned, st.NoneAssignedAt = false, time.Time{}
	}
	if n.kind != noteError {
		st.ErrorCode, st.ErrorReason, st.ErrorAt, st.Errors = 0, "", time.Time{}, 0
	}
	// Only a change is written: an unchanged answer ({}) costs no commit. A note that comes with a
	// configuration is committed with it.
	if st != old {
		mark := len(m.j.ops)
		m.j.setServerState(st)
		if n.kind != noteConfig && n.kind != noteAnswered {
			if m.commitNow() == commitFailed {
				// Compared with the stored state, the note must not reach it with a later commit,
				// after what came since.
				m.j.truncate(mark)
				return errNotStored
			}
		}
	}

	switch n.kind {
	case noteError:
		args := []any{"endpoint", ep.key, "topic", topic, "status_code", n.code, "reason", n.reason, "errors_in_a_row", st.Errors}
		if n.malformed != "" {
			args = append(args, "malformed", n.malformed)
		}
		if latest := ep.lastRID.Load(); n.rid != 0 && n.rid != latest {
			// An error for an older request: a newer one is already out.
			e.log.Warn("server refused an earlier configuration request", args...)
			return nil
		}
		if d, ok := e.retryRequest(ep); ok {
			args = append(args, "retry_in", d.Round(time.Millisecond))
		}
		e.log.Warn("server refused the configuration request", args...)
	case noteNone:
		ep.retry.reset()
		e.log.Info("server has no configuration for the endpoint; output left as it is", "endpoint", ep.key, "topic", topic)
	case noteUnchanged:
		ep.retry.reset()
		e.log.Debug("configuration unchanged", "endpoint", ep.key, "topic", topic)
	default:
		ep.retry.reset()
	}
	return nil
}

// errRetry repeats a configuration request the server refused: 1 s doubling to 5 min, jittered. At
// most one repeat is scheduled at a time; a usable response cancels it and resets the backoff.
type errRetry struct {
	mu      sync.Mutex
	bo      backoff
	epoch   uint64 // bumped by reset: a repeat scheduled before it does not fire
	pending bool
}

// Backoff bounds of a refused request.
const (
	errRetryMin = time.Second
	errRetryMax = 5 * time.Minute
)

// schedule returns the delay of the next repeat and the epoch it belongs to; ok is false when a
// repeat is already scheduled.
func (r *errRetry) schedule() (d time.Duration, epoch uint64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending {
		return 0, 0, false
	}
	if r.bo.min == 0 {
		r.bo = backoff{min: errRetryMin, max: errRetryMax}
	}
	r.pending = true
	return r.bo.next(), r.epoch, true
}

// fire reports whether the repeat scheduled in epoch is still wanted, and clears it.
func (r *errRetry) fire(epoch uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if epoch != r.epoch {
		return false
	}
	r.pending = false
	return true
}

func (r *errRetry) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bo.reset()
	r.epoch++
	r.pending = false
}

// retryRequest schedules a repeat of ep's request on the current connection. A connection that ends
// first cancels it: the next connection requests anyway.
func (e *Engine) retryRequest(ep *endpoint) (time.Duration, bool) {
	d, epoch, ok := ep.retry.schedule()
	if !ok {
		return 0, false
	}
	gen, done := e.conn.current()
	if done == nil {
		ep.retry.fire(epoch)
		return 0, false
	}
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-done:
			ep.retry.fire(epoch)
			return
		case <-t.C:
		}
		if !ep.retry.fire(epoch) {
			return
		}
		if g, _ := e.conn.current(); g != gen {
			return
		}
		e.log.Info("asking again for the configuration after an error", "endpoint", ep.key, "waited", d.Round(time.Millisecond))
		e.send(gen, []*endpoint{ep})
	}()
	return d, true
}
