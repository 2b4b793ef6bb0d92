package engine

import (
	"sync"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/backoff"
	"github.com/cmx-agent/cmx-agent/internal/clock"
)

// Request asks for the latest configuration of the endpoints with these keys on the live
// connection (after a reload has subscribed their topics).
func (e *Engine) Request(keys []string) {
	gen := e.conn.current()
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
	gen := e.conn.current()
	if gen == 0 {
		return 0, false
	}
	eps := e.endpointList()
	e.log.Info("latest configuration requested on demand", "endpoints", len(eps))
	e.request(gen, eps)
	return len(eps), true
}

// request sends a request for each of eps now, on connection gen, and (re)arms each endpoint's
// repeat at the pull timeout: a lost answer must not park an endpoint until the next reconnect,
// and asking again (a sync, a reload) restarts the endpoint's one repeat rather than adding one.
func (e *Engine) request(gen uint64, eps []*endpoint) {
	for _, ep := range eps {
		ep.req.ask(e, ep, gen)
	}
}

// requester is an endpoint's one request loop. Whatever asks for the latest configuration (a
// connect, a reload, a sync, a refused request's retry), at most one repeat is armed per endpoint:
// a timer, so a waiting repeat costs no goroutine.
//
// Two kinds of repeat share it. An unanswered request is repeated after the pull timeout, doubling
// to 10 min, until the endpoint is answered. A request the server refused (7/CMP) is repeated
// after 1 s doubling to 5 min, jittered; a usable response resets that backoff. Either ends with the
// connection it was armed on.
type requester struct {
	mu      sync.Mutex
	gen     uint64 // the connection the armed repeat belongs to; 0 = none armed
	timer   clock.Timer
	arming  uint64          // counts the arms: a timer armed before the last one does nothing
	refused bool            // the armed repeat is a refused request's
	repeats int             // the armed unanswered-request repeat is the n-th interval (pullWait)
	bo      backoff.Backoff // a refused request's
	// since is when the request now unanswered was first sent: its repeats (and syncs) do not
	// move it, an answer does (the next request starts a new wait). Zero when none was sent on
	// this connection.
	since time.Time
}

// Backoff bounds of a refused request.
const (
	errRetryMin = time.Second
	errRetryMax = 5 * time.Minute
)

// maxPullWait bounds the interval of an unanswered request's repeat.
const maxPullWait = 10 * time.Minute

// ask sends ep's request now and arms its repeat after the pull timeout. It replaces any repeat
// armed before, a refused request's included: the request it would repeat has just been sent.
func (r *requester) ask(e *Engine, ep *endpoint, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sending(e, ep)
	e.send(gen, ep)
	r.repeats = 1
	r.arm(e, ep, gen, pullWait(e, r.repeats), false)
}

// arm schedules the repeat; r.mu must be held.
func (r *requester) arm(e *Engine, ep *endpoint, gen uint64, d time.Duration, refused bool) {
	r.disarm()
	r.arming++
	r.gen, r.refused = gen, refused
	arming := r.arming
	r.timer = e.opt.Clock.AfterFunc(d, func() { r.fire(e, ep, arming, d) })
}

// disarm stops the armed repeat; r.mu must be held.
func (r *requester) disarm() {
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	r.gen, r.refused = 0, false
}

// cancel stops a repeat armed on connection gen, which has ended; gen 0 stops any (the engine
// closes).
func (r *requester) cancel(gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen == 0 || r.gen == gen {
		r.disarm()
		r.since = time.Time{} // the requests of that connection are dropped: nothing waits
	}
}

// sending notes that a request is about to be sent; r.mu must be held. The wait starts now unless
// an earlier request is still unanswered.
func (r *requester) sending(e *Engine, ep *endpoint) {
	if r.since.IsZero() || ep.answered.Load() {
		r.since = e.opt.Clock.Now()
	}
}

// waitingSince is when the endpoint's unanswered request was first sent; zero when it was answered,
// when a refused request waits for its retry (the server did answer), or when none is out.
func (r *requester) waitingSince(ep *endpoint) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen == 0 || r.refused || ep.answered.Load() {
		return time.Time{}
	}
	return r.since
}

// fire repeats the request armed as arming, waited ago, if it is still wanted: the connection is the
// one it was armed on, the endpoint is still configured, and (for an unanswered request) no answer
// came.
func (r *requester) fire(e *Engine, ep *endpoint, arming uint64, waited time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if arming != r.arming || r.timer == nil {
		return // disarmed or armed again since
	}
	r.timer = nil
	gen, refused := r.gen, r.refused
	if e.conn.current() != gen || ep.removed() || !refused && ep.answered.Load() {
		r.disarm()
		return
	}
	if refused {
		e.log.Info("asking again for the configuration after an error", "endpoint", ep.key, "waited", waited.Round(time.Millisecond))
		r.repeats = 1
	} else {
		e.log.Info("no answer to configuration request; asking again", "endpoint", ep.key, "waited", waited)
		r.repeats++
	}
	r.sending(e, ep)
	e.send(gen, ep)
	r.arm(e, ep, gen, pullWait(e, r.repeats), false)
}

// pullWait is the n-th interval of an unanswered request's repeats: the pull timeout, then doubling
// up to maxPullWait (a pull timeout beyond it is waited once). It is not jittered: every endpoint's
// first request goes at its own moment (the connection's, or a sync's), and its repeats keep that
// spread.
func pullWait(e *Engine, n int) time.Duration {
	if n <= 1 {
		return e.opt.PullTimeout
	}
	return backoff.Policy{Min: e.opt.PullTimeout, Max: maxPullWait}.Ceiling(n)
}

// refuse arms the repeat of a request the server refused, on the current connection, and returns
// its delay; ok is false when none was armed: one is armed already (the same refusal told twice
// must not double the backoff), or the agent is offline (the next connection requests anyway).
func (r *requester) refuse(e *Engine, ep *endpoint) (d time.Duration, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refused && r.timer != nil {
		return 0, false
	}
	gen := e.conn.current()
	if gen == 0 {
		return 0, false
	}
	d = r.bo.Next()
	r.arm(e, ep, gen, d, true)
	return d, true
}

// reset takes a usable response: the refusals' backoff starts again from its minimum, and a
// refused request's repeat is not wanted any more. An unanswered request's repeat stays armed: it
// may be for a request sent since (a sync), and it does nothing once that one is answered.
func (r *requester) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bo.Reset()
	if r.refused {
		r.disarm()
	}
}

func (e *Engine) send(gen uint64, ep *endpoint) {
	id := e.nextID()
	topic, payload := e.dia.request(ep, id, e.stateOf(ep))
	ep.answered.Store(false)
	ep.asked.add(id)
	e.out.request(OutMsg{Endpoint: ep.key, Topic: topic, QoS: 1, Payload: payload, Request: true}, gen)
	e.log.Debug("requested latest configuration", "endpoint", ep.key, "topic", topic, "msg_id", id)
}
