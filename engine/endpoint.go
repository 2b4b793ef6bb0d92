package engine

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
)

// endpoint is one configured endpoint: a token, or a token and a configuration name (7/CMP). Its
// goroutine (run) owns its state machine; everything else talks to it through its queue of events.
type endpoint struct {
	key, token, name, prefix string // fixed for the endpoint's life: message routing reads them freely
	e                        *Engine

	// answered is set when a configuration message arrives, so unanswered requests are repeated.
	answered atomic.Bool
	// lastRID is the request id of the latest configuration request (an error answering an older
	// one is not repeated).
	lastRID atomic.Uint64
	req     requester // the endpoint's one request loop (requests.go)
	// busyFlag mirrors the machine for status: an offer is being applied or waits.
	busyFlag atomic.Bool
	stats    counters // for metrics

	mu      sync.Mutex
	cfg     config.Endpoint // read by others under mu; changed by the machine between applies
	queue   []event
	wake    chan struct{}
	started bool
	quit    bool
	closed  bool // the goroutine has returned: what is posted now is answered at once
	done    chan struct{}

	m machine // the state machine: the endpoint's goroutine only
}

func (e *Engine) newEndpoint(ec config.Endpoint) *endpoint {
	ep := &endpoint{
		key:    ec.Key(),
		token:  ec.Token,
		name:   ec.Name,
		prefix: prefixOf(e.kaa, ec.Token),
		e:      e,
		cfg:    ec,
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	ep.m.ep = ep
	return ep
}

// config returns the endpoint's options of the moment.
func (ep *endpoint) config() config.Endpoint {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return ep.cfg
}

// event is something for the state machine: an arrival, the end of an apply, a timer, a new
// configuration, a drift check.
type event interface{}

type (
	evArrival struct {
		in      inbound
		topic   string
		qos     byte
		size    int
		receipt *Receipt
	}
	evApplied struct {
		o   *pending
		out outcome
	}
	evRetry    struct{}
	evDrift    struct{}
	evOptions  struct{ cfg config.Endpoint }
	evRecovery struct{ offers []*Offer } // offers a crash left pending, applied at start
)

// post queues ev for the machine; it never blocks.
func (ep *endpoint) post(ev event) {
	ep.mu.Lock()
	if ep.closed {
		ep.mu.Unlock()
		if a, ok := ev.(evArrival); ok {
			a.receipt.release(errEndpointGone)
		}
		return
	}
	ep.queue = append(ep.queue, ev)
	ep.mu.Unlock()
	select {
	case ep.wake <- struct{}{}:
	default:
	}
}

// start runs the endpoint's goroutine until ctx ends or stop is called.
func (ep *endpoint) start(ctx context.Context, wg *sync.WaitGroup) {
	ep.mu.Lock()
	if ep.started {
		ep.mu.Unlock()
		return
	}
	ep.started = true
	ep.mu.Unlock()
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(ep.done)
		ep.run(ctx)
	}()
}

// stop makes the goroutine return once the apply in progress has been committed, and waits for it.
// An endpoint whose goroutine never started has nothing to wait for.
func (ep *endpoint) stop() {
	ep.mu.Lock()
	started := ep.started
	ep.quit = true
	ep.mu.Unlock()
	select {
	case ep.wake <- struct{}{}:
	default:
	}
	if started {
		<-ep.done
	}
}

func (ep *endpoint) run(ctx context.Context) {
	m := &ep.m
	m.ctx = ctx
	defer m.stopTimer()
	for {
		ep.mu.Lock()
		evs := ep.queue
		ep.queue = nil
		quit := ep.quit
		ep.mu.Unlock()
		m.quitting = quit || ctx.Err() != nil
		m.removing = quit && ctx.Err() == nil
		for _, ev := range evs {
			m.handle(ev)
		}
		if m.quitting && m.phase != applying {
			m.shutdown(m.removing)
			ep.close(m.removing)
			return
		}
		if len(evs) > 0 {
			continue
		}
		var timer <-chan time.Time
		if m.timer != nil {
			timer = m.timer.C
		}
		select {
		case <-ctx.Done():
		case <-ep.wake:
		case <-timer:
			m.timer = nil
			m.handle(evRetry{})
		}
	}
}

// phase is where an endpoint's state machine stands.
//
//	         arrive                      applied, committed, nothing next
//	idle ─────────────▶ applying ──────────────────────────────────────▶ idle
//	 ▲                  │  ▲  │ applied, committed, next waiting: apply it
//	 │                  │  └──┘
//	 │     applied, the │ arrive: the newer offer waits in next (an older waiting one is
//	 │   commit failed  │         superseded); the same id merges with the offer it repeats
//	 │                  ▼
//	 └────────────── retrying ── timer: commit again ──▶ applying (next) or idle
//
// Options from a reload and drift checks are taken only in idle (or before the next apply starts),
// so an endpoint's options never change in the middle of an apply and a repair never undoes a write
// in progress or a result not yet committed.
type phase int

const (
	idle     phase = iota // nothing to apply
	applying              // the pipeline runs for running; a newer offer may wait in next
	retrying              // the pipeline has finished; its result could not be committed yet
)

func (p phase) String() string {
	return [...]string{"idle", "applying", "retrying"}[p]
}

// pending is an offer the machine holds: in memory, and in the database when durable.
type pending struct {
	o *Offer
	// durable: the offer is in the database, or goes there with the journal's next commit (a
	// receive commit, or left by a crash). Otherwise the broker still holds it, unacknowledged, and
	// will deliver it again after a crash: it must not be acknowledged before its result is
	// committed (a removed endpoint's, which is dropped, is acknowledged at its stop).
	durable bool
	// waiters are the receipts released when the offer's result (or its being superseded) is
	// committed: the held path's. A stored offer's receipt goes with its receive commit.
	waiters []*Receipt
}

// machine is an endpoint's state. Only the endpoint's goroutine touches it.
type machine struct {
	ep  *endpoint
	ctx context.Context

	phase   phase
	running *pending // being applied (applying), or its result being committed (retrying)
	next    *pending // the newest offer waiting behind running
	result  *outcome // retrying: the outcome whose commit failed
	// st is the endpoint's committed state, read once and then kept: the machine is its only
	// writer, so neither an apply nor its result has to read it back from the store.
	st *EndpointState

	j journal // what waits for the next commit

	timer     *time.Timer
	backoff   backoff
	cfgDue    *config.Endpoint // options from a reload, taken at the next idle moment
	driftDue  bool
	driftLate bool // a drift event came during an apply
	quitting  bool // the endpoint stops after the apply in progress: nothing more is started
	removing  bool // quitting because a reload removed it (not because the agent stops)
	// lastDrift is the hash of the drifted output last reported, so a report is logged once per
	// change.
	lastDrift string
}

// state returns the endpoint's committed state.
func (m *machine) state() EndpointState {
	if m.st == nil {
		st := m.ep.e.stateOf(m.ep)
		m.st = &st
	}
	return *m.st
}

func (m *machine) setTimer(d time.Duration) {
	m.stopTimer()
	m.timer = time.NewTimer(d)
}

func (m *machine) stopTimer() {
	if m.timer != nil {
		m.timer.Stop()
		m.timer = nil
	}
}

func (m *machine) handle(ev event) {
	switch ev := ev.(type) {
	case evArrival:
		m.arrive(ev)
	case evApplied:
		m.applied(ev.o, ev.out)
	case evRetry:
		m.retryTick()
	case evDrift:
		if m.phase == idle {
			m.driftDue = true
		} else {
			// Seen during an apply: the change may still be under way when the apply ends, so
			// the check waits a debounce from then, as any other.
			m.driftLate = true
		}
	case evOptions:
		c := ev.cfg
		m.cfgDue = &c
	case evRecovery:
		m.recover(ev.offers)
	}
	m.settle()
	m.ep.busyFlag.Store(m.phase != idle || m.next != nil)
}

func (ep *endpoint) busy() bool { return ep.busyFlag.Load() }

// settle does what an idle endpoint has due: new options first (they may re-apply the stored
// configuration), then the next offer, then a drift check.
func (m *machine) settle() {
	if m.phase != idle {
		return
	}
	if m.cfgDue != nil {
		c := *m.cfgDue
		m.cfgDue = nil
		m.takeOptions(c)
		if m.phase != idle {
			return
		}
	}
	if m.next != nil && !m.quitting {
		n := m.next
		m.next = nil
		m.start(n)
		return
	}
	if m.driftDue && m.ctx.Err() == nil {
		m.driftDue = false
		m.ep.e.checkDrift(m)
	}
	if m.driftLate {
		m.driftLate = false
		m.ep.e.scheduleDrift(m.ep)
	}
}

// start runs the pipeline for p in a goroutine of its own; its outcome comes back as evApplied.
func (m *machine) start(p *pending) {
	m.phase, m.running = applying, p
	ep, e := m.ep, m.ep.e
	cfg, st := ep.config(), m.state()
	e.applies.Add(1)
	go func() {
		defer e.applies.Done()
		out := e.runPipeline(m.ctx, ep, cfg, st, p.o)
		ep.post(evApplied{o: p, out: out})
	}()
}

// arrive takes a message: a refusal is answered, a repeated id joins the offer it repeats or is
// answered with its stored outcome, a new offer is applied or waits (superseding an older one that
// waited).
func (m *machine) arrive(a evArrival) {
	e, ep := m.ep.e, m.ep
	// mark is where this arrival's operations begin, so a failed receive commit can take them all
	// back: the note of a response that carries a configuration is one of them.
	mark := len(m.j.ops)
	if a.in.note != nil {
		if err := e.noteServer(m, a.topic, *a.in.note); err != nil {
			a.receipt.release(err)
			return
		}
		if len(m.j.ops) < mark {
			mark = 0 // the note was committed, with everything before it
		}
	}
	o := a.in.offer
	if o == nil {
		a.receipt.release(nil)
		return
	}
	o.Received = e.opt.Now()
	ep.stats.received.Add(1)
	fast := e.mayHold(ep.config(), a.qos)
	if fast {
		a.receipt.hold(&e.held)
	}

	switch {
	case a.in.reject != nil:
		e.log.Warn("configuration refused", "endpoint", ep.key, "id", o.Text, "topic", a.topic, "reason", a.in.reject.Status)
		ep.stats.count(a.in.reject.Code)
		if o.ID != "" {
			m.j.setHandled(o.ID, Handled{Status: a.in.reject.Status, Code: a.in.reject.Code})
		}
		m.j.answer(e, ep, o, *a.in.reject, fast)
		m.j.waiters = append(m.j.waiters, a.receipt)
		m.commitSoon(fast)
		return
	// An internal offer (the stored configuration applied again) answers nobody: a push with its
	// id is not one it repeats, and goes to the handled ids below.
	case o.ID != "" && m.running != nil && !m.running.o.Internal && m.running.o.ID == o.ID:
		if m.phase == retrying && m.next != nil && m.next.o.ID == o.ID {
			m.join(m.next, o, a, fast) // a repeat to be applied again after the commit, again
			return
		}
		// The offer being written, again. In 7/CMP a server sending it while a newer one waits has
		// changed its mind: the waiting one is superseded and this one ends on disk.
		if m.next != nil && e.dia.lastWordWins() {
			m.supersede(m.next, o)
			m.next = nil
		}
		if m.phase != retrying {
			m.join(m.running, o, a, fast)
			return
		}
		// Its result is recorded and waits for its commit. Joining would store the offer as
		// pending again after its deletion, or hold a receipt on an offer whose receipts were
		// handed over already: the repeat is answered with the result in that commit, unless the
		// dialect applies it again (a 7/CMP transient failure), as a new offer behind the commit.
		// The state as the result leaves it: recordResult put it in the journal, which a failed
		// commit keeps.
		if !e.dia.again(Handled(m.result.r), o, *m.j.state, m.next != nil) {
			m.j.answer(e, ep, o, m.result.r, fast)
			m.j.waiters = append(m.j.waiters, a.receipt)
			return
		}
	case o.ID != "" && m.next != nil && !m.next.o.Internal && m.next.o.ID == o.ID:
		m.join(m.next, o, a, fast)
		return
	case o.ID != "":
		h, seen, err := m.handled(o.ID)
		if err != nil {
			a.receipt.release(fmt.Errorf("read handled ids: %w", err))
			return
		}
		if seen && !e.dia.again(h, o, m.state(), m.running != nil || m.next != nil) {
			e.log.Warn("duplicate id confirmed again", "endpoint", ep.key, "id", o.Text, "topic", a.topic, "status", h.Status)
			m.j.answer(e, ep, o, Result(h), fast)
			m.j.waiters = append(m.j.waiters, a.receipt)
			m.commitSoon(fast)
			return
		}
	}

	seq := e.nextSeq()
	o.Seq = seq
	// The committed path stores the offer now and releases the receipt with that commit (the PUBACK
	// goes at `received`); the held path keeps it until the result's commit. A removed endpoint's
	// offer is not stored: it is dropped at the endpoint's stop, which releases the receipt.
	store := !fast && !m.removing
	p := &pending{o: o, durable: store}
	if store {
		m.j.putPending(p.o)
		m.j.waiters = append(m.j.waiters, a.receipt)
	} else {
		p.waiters = append(p.waiters, a.receipt)
	}
	// A stopping endpoint starts nothing: the offer waits in next, which close releases (removed)
	// or leaves to the broker and the database (the agent stopping).
	if m.phase == idle && m.next == nil && !m.quitting {
		if store {
			if !m.commitAt(StepReceived) {
				// Not applied: the broker delivers it again. Its record must not reach the
				// database with a later commit either, with nothing in memory to apply it.
				m.j.truncate(mark)
				return
			}
		} else {
			e.opt.Pause(StepReceived)
		}
		m.start(p)
		return
	}
	if m.next != nil {
		m.supersede(m.next, o)
	}
	m.next = p
	if store {
		m.commitAt(StepReceived)
	}
}

// join merges a repeated arrival into the offer p it repeats: one more route to answer, one more
// receipt to release with it. A repeat that is not held makes p durable with all its routes.
func (m *machine) join(p *pending, o *Offer, a evArrival, fast bool) {
	for _, r := range o.Routes {
		p.o.addRoute(r)
	}
	m.ep.e.log.Info("configuration received again while pending", "endpoint", m.ep.key, "id", o.Text, "topic", a.topic)
	if fast {
		p.waiters = append(p.waiters, a.receipt)
		return
	}
	p.durable = true
	m.j.putPending(p.o)
	m.j.waiters = append(m.j.waiters, a.receipt)
	m.commitNow()
}

// supersede answers old as replaced by newer, in the next commit.
func (m *machine) supersede(old *pending, newer *Offer) {
	e := m.ep.e
	r := e.dia.superseded(newer)
	if old.o.ID != "" && !old.o.Internal { // an internal offer's id is the applied one's: kept
		m.j.setHandled(old.o.ID, Handled(r))
	}
	if !old.o.Internal {
		m.j.answer(e, m.ep, old.o, r, !old.durable)
		m.ep.stats.count(r.Code)
	}
	if old.durable {
		m.j.deletePending(old.o.Seq)
	}
	m.j.waiters = append(m.j.waiters, old.waiters...)
	old.waiters = nil
	e.log.Warn("configuration superseded", "endpoint", m.ep.key, "superseded", old.o.Text, "by", newer.Text)
}

// handled looks an id up among the outcomes not yet committed, then in the store.
func (m *machine) handled(id string) (Handled, bool, error) {
	if h, ok := m.j.handled[id]; ok {
		return h, true, nil
	}
	var (
		h  Handled
		ok bool
	)
	err := m.ep.e.store.View(func(tx *Tx) error {
		var err error
		h, ok, err = tx.Handled(m.ep.key, id)
		return err
	})
	return h, ok, err
}

// commitSoon commits the journal now, unless an apply runs whose commit is near and the journal's
// receipts may wait for it (they are held, which only a fast apply may do).
func (m *machine) commitSoon(fast bool) {
	if fast && m.phase == applying {
		return
	}
	m.commitNow()
}

// commitNow commits the journal; on failure the receipts waiting on it are released with the error
// (the transport then does not acknowledge them, and the broker delivers them again).
func (m *machine) commitNow() bool { return m.commitAt("") }

// commitAt is commitNow with the pause point step between the commit and the release.
func (m *machine) commitAt(step string) bool {
	if m.phase == retrying {
		// The result's commit is being retried, and takes this journal along (receipts included)
		// when it succeeds; a failure here must not drop the result with it.
		return true
	}
	if err := m.ep.e.commit(m.ep, &m.j); err != nil {
		m.ep.e.log.Error("cannot store received configuration; it stays unacknowledged", "endpoint", m.ep.key, "err", err)
		m.j.fail(err)
		return false
	}
	if step != "" {
		m.ep.e.opt.Pause(step)
	}
	m.j.committed()
	return true
}

// applied takes the pipeline's outcome for p and commits it.
func (m *machine) applied(p *pending, out outcome) {
	e, ep := m.ep.e, m.ep
	if out.abandoned {
		// Stopping: nothing is committed; a durable offer is applied again after the restart, a held
		// one is delivered again by the broker.
		e.log.Warn("stopping: configuration left pending", "endpoint", ep.key, "id", p.o.Text)
		for _, r := range p.waiters {
			r.release(errEndpointGone) // unacknowledged: the broker sends it again after the restart
		}
		m.phase, m.running = idle, nil
		return
	}
	m.result = &out
	m.recordResult(p, out)
	m.commitResult()
}

// recordResult puts p's outcome in the journal: the endpoint's state, the applied bytes, the id's
// outcome and the answers, and p leaves the pending offers.
func (m *machine) recordResult(p *pending, out outcome) {
	e, ep := m.ep.e, m.ep
	now := e.opt.Now()
	st := m.state()
	st.LastText, st.LastStatus, st.LastCode, st.LastAt = p.o.Text, out.r.Status, out.r.Code, now
	if out.applied {
		st.AppliedID, st.AppliedText, st.AppliedHash, st.AppliedShape, st.AppliedAt = p.o.ID, p.o.Text, out.hash, out.shape, now
		m.j.setApplied(out.body, p.o.Body, out.rendered)
	}
	m.j.setState(st)
	if p.o.ID != "" && !p.o.Internal {
		m.j.setHandled(p.o.ID, Handled(out.r))
	}
	if !p.o.Internal {
		m.j.answer(e, ep, p.o, out.r, !p.durable)
	}
	if p.durable {
		m.j.deletePending(p.o.Seq)
	}
	m.j.waiters = append(m.j.waiters, p.waiters...)
	p.waiters = nil
}

// commitResult commits the journal holding a result; on failure the machine retries the commit (not
// the apply: the file is in place, and applying again would run the hook again).
func (m *machine) commitResult() {
	e, ep := m.ep.e, m.ep
	p, out := m.running, *m.result
	// Status must not show the result committed while the endpoint still reads as busy.
	ep.busyFlag.Store(m.next != nil)
	committedState := m.j.state
	if err := e.commit(ep, &m.j); err != nil {
		ep.busyFlag.Store(true)
		d := m.backoff.next()
		e.log.Error("cannot record the result; retrying", "endpoint", ep.key, "id", p.o.Text, "in", d.Round(time.Millisecond), "err", err)
		m.phase = retrying
		m.setTimer(d)
		return
	}
	m.backoff.reset()
	m.st = committedState
	if !p.o.Internal {
		ep.stats.count(out.r.Code)
	}
	if out.r.OK() {
		e.log.Info("configuration applied", "endpoint", ep.key, "id", p.o.Text, "output", out.output, "bytes", len(out.body))
	} else {
		e.log.Error("configuration not applied", "endpoint", ep.key, "id", p.o.Text, "status", out.r.Status)
	}
	e.opt.Pause(StepCommitted)
	m.j.committed()
	m.phase, m.running, m.result = idle, nil, nil
	e.changed()
}

func (m *machine) retryTick() {
	if m.phase == retrying {
		m.commitResult()
	}
}

// recover takes the offers a crash left in the database, oldest first: all but the newest are
// applied in turn only if one of them was being written (it may have half run its hook); the
// newest waits behind it.
func (m *machine) recover(offers []*Offer) {
	if m.quitting && !m.removing {
		return // the agent stops: the records stay, to be recovered at the next start
	}
	for _, o := range offers {
		p := &pending{o: o, durable: true}
		if m.phase == idle && m.next == nil && !m.quitting {
			m.start(p)
			continue
		}
		if m.next != nil {
			m.supersede(m.next, o)
		}
		m.next = p
	}
}

// takeOptions switches to new options between applies. When what shapes the file changed (output,
// mode, owner, group, template), the stored configuration is applied again at once under the new
// options, validate and hook included.
func (m *machine) takeOptions(c config.Endpoint) {
	ep, e := m.ep, m.ep.e
	ep.mu.Lock()
	old := ep.cfg
	ep.cfg = c
	ep.mu.Unlock()
	if old.Output != c.Output {
		e.log.Warn("endpoint output moved; the old file stays", "endpoint", ep.key, "old", old.Output, "new", c.Output)
	}
	e.kickDrift()
	m.reapplyIfReshaped()
}

// reapplyIfReshaped applies the stored configuration again when the options that shape the file no
// longer match the ones it was applied with.
func (m *machine) reapplyIfReshaped() {
	ep, e := m.ep, m.ep.e
	st := m.state()
	if m.quitting || st.AppliedHash == "" || st.AppliedShape == "" {
		return // stopping: the next start compares the shapes again
	}
	if shapeOf(ep.config()) == st.AppliedShape {
		return
	}
	raw, ok, err := e.store.storedBytes(ep.key, (*Tx).Raw)
	if err != nil || !ok {
		e.log.Error("cannot read the stored configuration to apply it under the new options", "endpoint", ep.key, "err", err)
		return
	}
	e.log.Info("endpoint options changed: applying the stored configuration again", "endpoint", ep.key, "id", st.AppliedText)
	o := &Offer{Seq: e.nextSeq(), ID: st.AppliedID, Text: st.AppliedText, Body: raw, Internal: true, Received: e.opt.Now()}
	m.start(&pending{o: o})
}

// close ends the endpoint's queue. The receipts of what it will not apply are released: for an
// endpoint removed by a reload with nil, so the broker forgets messages nobody wants (and the
// PUBACKs after them are not held up); when the agent stops with an error, so they stay
// unacknowledged and come again after the restart.
func (ep *endpoint) close(removed bool) {
	err := errEndpointGone
	if removed {
		err = nil
	}
	ep.mu.Lock()
	ep.closed = true
	evs := ep.queue
	ep.queue = nil
	ep.mu.Unlock()
	for _, ev := range evs {
		if a, ok := ev.(evArrival); ok {
			a.receipt.release(err)
		}
	}
	m := &ep.m
	for _, p := range []*pending{m.next, m.running} {
		if p != nil {
			for _, r := range p.waiters {
				r.release(err)
			}
		}
	}
	for _, r := range m.j.waiters {
		r.release(err)
	}
}

// shutdown ends the machine: nothing more is applied; what waits stays durable or with the broker.
//
// A removed endpoint's waiting offer leaves the database: it is not applied, its receipts are
// released (the broker forgets it), and were the endpoint added again it asks for its latest
// configuration instead of applying one the reload dropped.
func (m *machine) shutdown(removed bool) {
	if m.phase == retrying {
		// One last try, so a result that can be committed is not redone after the restart.
		m.commitResult()
	}
	if removed && m.next != nil && m.next.durable {
		m.j.deletePending(m.next.o.Seq)
		m.next.durable = false
	}
	if len(m.j.ops) > 0 {
		m.commitNow()
	}
}

// backoff is exponential with jitter: each delay is drawn from [d/2, d] where d doubles from min to
// max (defaults 1 s and 30 s).
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.min == 0 {
		b.min, b.max = time.Second, 30*time.Second
	}
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return jitter(b.cur)
}

func (b *backoff) reset() { b.cur = 0 }
