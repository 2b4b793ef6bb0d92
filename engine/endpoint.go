package engine

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/backoff"
	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/store"
)

// endpoint is one configured endpoint: a token, or a token and a configuration name (7/CMP). Its
// goroutine (run) owns its state machine; everything else talks to it through its queue of events.
type endpoint struct {
	key, token, name, prefix string // fixed for the endpoint's life: message routing reads them freely
	e                        *Engine

	// answered is set when a configuration message arrives, so unanswered requests are repeated.
	answered atomic.Bool
	// asked holds the latest request ids, so an answer to one is known as such (and an error
	// answering an older one is not repeated).
	asked asked
	req   requester // the endpoint's one request loop (requests.go)
	// busyFlag mirrors the machine for status: an offer is being applied or waits.
	busyFlag atomic.Bool
	// applying mirrors the pipeline in progress for status and metrics, so an apply that does not
	// end (a hook that ignores its timeout, a stalled file system) shows which and since when.
	applying applyingNow
	stats    counters // for metrics

	mu      sync.Mutex
	cfg     config.Endpoint // read by others under mu; changed by the machine between applies
	queue   []event
	wake    chan struct{}
	started bool
	quit    bool
	closed  bool // the goroutine has returned: what is posted now is answered at once
	// closedErr answers what is posted once closed: nil for an endpoint a reload removed (the
	// broker forgets what nobody wants, and the connection goes on), errEndpointGone when the
	// agent stops (it comes again after the restart).
	closedErr error
	done      chan struct{}

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
	ep.m.backoff = resultRetry()
	ep.req.bo = backoff.Backoff{Policy: backoff.Policy{Min: errRetryMin, Max: errRetryMax}}
	return ep
}

// applyingNow is the apply in progress as others read it.
type applyingNow struct {
	mu    sync.Mutex
	id    string // as people read it
	since time.Time
}

func (a *applyingNow) set(id string, since time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.id, a.since = id, since
}

// get returns the apply in progress; since is zero when none runs.
func (a *applyingNow) get() (id string, since time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id, a.since
}

// asked remembers the ids of an endpoint's latest configuration requests.
type asked struct {
	mu  sync.Mutex
	ids [8]uint64 // a ring: a server answers the latest requests, not those of an hour ago
	n   int
}

func (a *asked) add(id uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ids[a.n%len(a.ids)] = id
	a.n++
}

// last is the latest request id; 0 before the first.
func (a *asked) last() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == 0 {
		return 0
	}
	return a.ids[(a.n-1)%len(a.ids)]
}

func (a *asked) has(id uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return id != 0 && slices.Contains(a.ids[:], id)
}

// requested reports whether id is one of the endpoint's latest configuration requests.
func (ep *endpoint) requested(id uint64) bool { return ep.asked.has(id) }

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
		results listeners // told the offer's outcome (import.go)
	}
	evApplied struct {
		o   *pending
		out outcome
	}
	evRetry     struct{}
	evHoldBound struct{} // Options.HoldBound has passed since the machine began holding
	evDrift     struct{}
	evOptions   struct{ cfg config.Endpoint }
	evRecovery  struct{ offers []*store.Offer } // offers a crash left pending, applied at start
)

// post queues ev for the machine; it never blocks.
func (ep *endpoint) post(ev event) {
	ep.mu.Lock()
	if ep.closed {
		err := ep.closedErr
		ep.mu.Unlock()
		if a, ok := ev.(evArrival); ok {
			a.receipt.release(err)
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

// postFirst queues ev ahead of everything queued, for the offers a crash left pending: they are
// older than any message that arrived in this run before the endpoint's goroutine started, which
// may be the broker delivering one of them again.
func (ep *endpoint) postFirst(ev event) {
	ep.mu.Lock()
	if ep.closed {
		ep.mu.Unlock()
		return
	}
	ep.queue = append([]event{ev}, ep.queue...)
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
// An endpoint whose goroutine never started has nothing to wait for; it is closed at once.
func (ep *endpoint) stop() {
	ep.mu.Lock()
	started := ep.started
	ep.started = true // a start after this does nothing
	ep.quit = true
	ep.mu.Unlock()
	select {
	case ep.wake <- struct{}{}:
	default:
	}
	if started {
		<-ep.done
		return
	}
	// Never started (removed before Run reached it): what was posted, and what is posted from now
	// on, is released here, or it would wait for a goroutine that never comes.
	ep.close(true)
}

func (ep *endpoint) run(ctx context.Context) {
	m := &ep.m
	m.ctx = ctx
	defer m.stopTimer()
	defer m.stopHold()
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
		var timer, hold <-chan time.Time
		if m.timer != nil {
			timer = m.timer.C()
		}
		if m.hold != nil {
			hold = m.hold.C()
		}
		// Quitting, the machine waits only for the apply in progress, whose end wakes it: an ended
		// context, ready at every select, would spin a core for as long as that apply takes.
		var ended <-chan struct{}
		if !m.quitting {
			ended = ctx.Done()
		}
		select {
		case <-ended:
		case <-ep.wake:
		case <-timer:
			m.timer = nil
			m.handle(evRetry{})
		case <-hold:
			m.hold = nil
			m.handle(evHoldBound{})
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

// pending is an offer the machine holds: in memory, and in the database when stored.
type pending struct {
	o *store.Offer
	// ack is how the offer's acknowledgement goes. ackStored: the offer is in the database, or goes
	// there with the journal's next commit (a receive commit, or left by a crash). ackHeld: the
	// broker still holds it, unacknowledged, and will deliver it again after a crash: it must not
	// be acknowledged before its result is committed, or before it is stored (releaseHolds); a
	// removed endpoint's, which is dropped, is acknowledged at its stop.
	ack ack
	// waiters are the receipts released when the offer's result (or its being superseded) is
	// committed: the held path's, its own and those of held repeats that joined it, stored or not
	// (a repeat's route is stored only by a later commit). A stored offer's own receipt goes with
	// its receive commit. Any waiter is a held PUBACK, bounded by releaseHolds.
	waiters []*Receipt
	results listeners // told the offer's outcome: the arrival's and those of repeats that joined it
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
	st *store.EndpointState
	// acc is the endpoint's committed Accepted record (signed.go), read once and then kept, as st.
	acc *store.Accepted

	j journal // what waits for the next commit

	timer clock.Timer // the retried result commit's
	// hold ends the acknowledgements held back once Options.HoldBound has passed (releaseHolds).
	hold      clock.Timer
	backoff   backoff.Backoff  // the result commit's retries
	cfgDue    *config.Endpoint // options from a reload, taken at the next idle moment
	driftDue  bool
	driftLate bool // a drift event came during an apply
	quitting  bool // the endpoint stops after the apply in progress: nothing more is started
	removing  bool // quitting because a reload removed it (not because the agent stops)
	// lastDrift is the hash of the drifted output last reported, so a report is logged once per
	// change.
	lastDrift string
}

// commit commits the journal, and takes what it recorded into the machine's copies of the
// committed records (m.st, m.acc), whichever path commits it: the machine is their only writer, so
// it never reads them back. The receipts and answers wait for journal.committed.
func (m *machine) commit() error {
	st, acc := m.j.state, m.j.accepted
	if err := m.ep.e.commit(m.ep, &m.j); err != nil {
		return err
	}
	if st != nil {
		m.st = st
	}
	if acc != nil {
		m.acc = acc
	}
	return nil
}

// state returns the endpoint's committed state.
func (m *machine) state() store.EndpointState {
	if m.st == nil {
		st := m.ep.e.stateOf(m.ep)
		m.st = &st
	}
	return *m.st
}

func (m *machine) setTimer(d time.Duration) {
	m.stopTimer()
	m.timer = m.ep.e.opt.Clock.NewTimer(d)
}

// watchHolds starts the hold bound's timer when the machine begins holding acknowledgements back,
// and stops it when it holds none.
func (m *machine) watchHolds() {
	switch holding := m.holding(); {
	case holding && m.hold == nil:
		m.hold = m.ep.e.opt.Clock.NewTimer(m.ep.e.opt.HoldBound)
	case !holding:
		m.stopHold()
	}
}

func (m *machine) stopHold() {
	if m.hold != nil {
		m.hold.Stop()
		m.hold = nil
	}
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
	case evHoldBound:
		m.releaseHolds()
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
	m.watchHolds()
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
	ep.applying.set(p.o.Text, ep.e.opt.Clock.Now())
	go func() {
		defer e.applies.Done()
		out := e.runPipeline(m.ctx, ep, cfg, st, p.o)
		ep.applying.set("", time.Time{})
		ep.post(evApplied{o: p, out: out})
	}()
}

// applied takes the pipeline's outcome for p and commits it.
func (m *machine) applied(p *pending, out outcome) {
	e, ep := m.ep.e, m.ep
	if out.abandoned {
		// Stopping: nothing is committed; a stored offer is applied again after the restart, a held
		// one is delivered again by the broker.
		e.log.Warn("stopping: configuration left pending", "endpoint", ep.key, "id", p.o.Text)
		for _, r := range p.waiters {
			r.release(errEndpointGone) // unacknowledged: the broker sends it again after the restart
		}
		p.results.notify(Result{Status: "the agent stopped during the apply; it is applied again after the restart", Code: store.CodeFailed})
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
	now := e.opt.Clock.Now()
	st := m.state()
	st.LastText, st.LastStatus, st.LastCode, st.LastAt = p.o.Text, out.r.Status, out.r.Code, now
	// The history lists configurations as they come into place, not the agent's own re-apply of
	// the stored one under new options (Tx.AddHistory skips the one in place applied again).
	if out.applied && !p.o.Internal {
		h := HistoryEntry{At: now, ID: p.o.Text, SHA256: out.hash, Origin: p.o.Origin}
		if p.o.Signed != nil {
			h.Version = p.o.Signed.Version
		}
		m.j.addHistory(h)
	}
	if out.applied {
		st.AppliedID, st.AppliedText, st.AppliedHash, st.AppliedShape, st.AppliedAt = p.o.ID, p.o.Text, out.hash, out.shape, now
		st.AppliedSealed = out.sealedHash
		m.j.setApplied(out.body, p.o.Body, out.rendered, out.sealed)
	} else if out.dropPrior {
		m.j.deletePrior()
	}
	m.j.setState(st)
	if p.o.ID != "" && !p.o.Internal {
		m.j.setHandled(p.o.ID, store.Handled(out.r))
	}
	m.recordAccepted(p.o, out.r)
	if !p.o.Internal {
		m.j.answer(e, ep, p.o, out.r, p.ack != ackStored)
	}
	if p.ack == ackStored {
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
	if err := m.commit(); err != nil {
		ep.busyFlag.Store(true)
		d := m.backoff.Next()
		e.log.Error("cannot record the result; retrying", "endpoint", ep.key, "id", p.o.Text, "in", d.Round(time.Millisecond), "err", err)
		m.phase = retrying
		m.setTimer(d)
		return
	}
	m.backoff.Reset()
	if !p.o.Internal {
		ep.stats.count(out.r.Code)
	}
	if out.unchanged {
		e.log.Info("configuration unchanged", "endpoint", ep.key, "id", p.o.Text, "output", out.output)
	} else if out.r.OK() {
		e.log.Info("configuration applied", "endpoint", ep.key, "id", p.o.Text, "output", out.output, "bytes", len(out.body))
	} else {
		e.log.Error("configuration not applied", "endpoint", ep.key, "id", p.o.Text, "status", out.r.Status)
	}
	e.opt.Pause(StepCommitted)
	m.j.committed()
	p.results.notify(out.r)
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
func (m *machine) recover(offers []*store.Offer) {
	if m.quitting && !m.removing {
		return // the agent stops: the records stay, to be recovered at the next start
	}
	for _, o := range offers {
		p := &pending{o: o, ack: ackStored}
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
	var (
		raw []byte
		ok  bool
	)
	err := e.store.View(func(tx *store.Tx) error {
		var err error
		raw, ok, err = tx.Raw(ep.key)
		return err
	})
	if err != nil || !ok {
		e.log.Error("cannot read the stored configuration to apply it under the new options", "endpoint", ep.key, "err", err)
		return
	}
	e.log.Info("endpoint options changed: applying the stored configuration again", "endpoint", ep.key, "id", st.AppliedText)
	o := &store.Offer{Seq: e.nextSeq(), ID: st.AppliedID, Text: st.AppliedText, Body: raw, Internal: true, Received: e.opt.Clock.Now()}
	m.start(&pending{o: o, ack: ackNone})
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
	ep.closed, ep.closedErr = true, err
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

// shutdown ends the machine: nothing more is applied; what waits stays stored or with the broker.
//
// A removed endpoint's waiting offer leaves the database: it is not applied, its receipts are
// released (the broker forgets it), and were the endpoint added again it asks for its latest
// configuration instead of applying one the reload dropped.
func (m *machine) shutdown(removed bool) {
	if m.phase == retrying {
		// One last try, so a result that can be committed is not redone after the restart.
		m.commitResult()
	}
	if removed && m.next != nil && m.next.ack == ackStored {
		m.j.deletePending(m.next.o.Seq)
		m.next.ack = ackHeld
		if m.commitNow() != committed {
			// The result's commit, or this one, failed: the record must still go, or the endpoint,
			// added again, would apply what the reload dropped. The engine deletes it with its
			// next commit, or before the endpoint starts again.
			m.ep.e.forgetPending(m.ep.key, m.next.o.Seq)
		}
	}
	if len(m.j.ops) > 0 {
		m.commitNow()
	}
}

// resultRetry is the backoff of a result's commit that failed: 1 s doubling to 30 s.
func resultRetry() backoff.Backoff {
	return backoff.Backoff{Policy: backoff.Policy{Min: time.Second, Max: 30 * time.Second}}
}
