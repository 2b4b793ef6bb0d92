package engine

import (
	"fmt"
	"time"

	"github.com/cmx-agent/cmx-agent/store"
)

// ack is how a received message's acknowledgement (its PUBACK) goes. It is decided once, on arrival,
// and kept on the pending offer.
type ack int

const (
	// ackNone: nobody waits for an acknowledgement (the agent's own re-apply of the stored
	// configuration); nothing of the offer is stored.
	ackNone ack = iota
	// ackHeld: nothing of the offer is stored on arrival; its PUBACK waits for the commit of its
	// result, and a crash before that is covered by the broker, which delivers it again. Only a
	// QoS 1 message on a persistent session for an endpoint without validate or hook is held (see
	// Engine.mayHold), and only for Options.HoldBound: PUBACKs go out in arrival order, so one
	// held PUBACK holds every later one, and an apply still running after the bound is stored
	// instead (releaseHolds). A removed endpoint's offer is held too, and released at its stop or
	// the bound, whichever comes first.
	ackHeld
	// ackStored: the offer is committed as pending (the receive commit) and its PUBACK goes with
	// that commit; a crash after it is recovered from the database.
	ackStored
)

func (a ack) String() string { return [...]string{"none", "held", "stored"}[a] }

// DefaultHoldBound is how long a PUBACK is held for a quick apply before the offer is stored and the
// PUBACK released (docs/durability.md, "How long a PUBACK is held").
const DefaultHoldBound = 500 * time.Millisecond

// arrivalKind is what an arriving configuration is to the endpoint. The machine decides it in one
// place (classify) and handles each kind in a function of its own.
type arrivalKind int

const (
	// arrivalRefused: the dialect refused the message (not JSON, too large, …): answered at once.
	arrivalRefused arrivalKind = iota
	// arrivalRepeatsRunning: the id of the offer being applied, or whose result waits for its commit.
	arrivalRepeatsRunning
	// arrivalRepeatsWaiting: the id of the offer waiting behind the one being applied.
	arrivalRepeatsWaiting
	// arrivalHandled: an id handled before: answered with what is true now, or applied again.
	arrivalHandled
	// arrivalNew: a configuration to apply, now or after the one being applied.
	arrivalNew
)

func (k arrivalKind) String() string {
	return [...]string{"refused", "repeats running", "repeats waiting", "handled before", "new"}[k]
}

// arrival is one received configuration message as the machine handles it.
type arrival struct {
	evArrival
	o    *store.Offer
	kind arrivalKind
	ack  ack
	h    store.Handled // arrivalHandled: the outcome stored for the id
	// mark is where the arrival's journal operations begin, so a failed receive commit can take
	// them all back (the note of a response that carries a configuration is one of them).
	mark int
}

// commitOutcome says whether a commit of the journal happened.
type commitOutcome int

const (
	committed commitOutcome = iota // stored; the receipts waiting on it are released
	// deferred: the result's commit is being retried and takes the journal along, receipts
	// included, when it succeeds.
	deferred
	commitFailed // nothing stored; the receipts waiting on it are released with the error
)

// arrive takes a configuration message: what the server said besides it is noted first, then the
// offer it carries, if any, is classified and handled.
func (m *machine) arrive(a evArrival) {
	e := m.ep.e
	if e.conn.hasFailed(a.receipt.gen) {
		// Queued before an earlier message's failure was known: it comes again after that one.
		a.receipt.release(errAfterFailure)
		return
	}
	mark := len(m.j.ops)
	if a.in.note != nil {
		if err := m.noteServer(a.topic, *a.in.note); err != nil {
			a.receipt.release(err)
			return
		}
		if len(m.j.ops) < mark {
			mark = 0 // the note was committed, with everything before it
		}
	}
	if a.in.offer == nil {
		a.receipt.release(nil)
		return
	}
	x, err := m.classify(a)
	if err != nil {
		a.receipt.release(err)
		return
	}
	x.mark = mark
	x.o.Received = e.opt.Clock.Now()
	if a.in.own {
		x.o.Origin = store.OriginPull
	}
	m.ep.stats.received.Add(1)
	if x.ack == ackHeld {
		a.receipt.hold(&e.held)
	}
	switch x.kind {
	case arrivalRefused:
		m.onRefused(x)
	case arrivalRepeatsRunning:
		m.onRepeatOfRunning(x)
	case arrivalRepeatsWaiting:
		m.join(m.next, x)
	case arrivalHandled:
		m.onHandled(x)
	case arrivalNew:
		m.onNew(x)
	}
}

// classify decides what an arriving message is. An internal offer (the stored configuration applied
// again by the agent) answers nobody: a push with its id is no repeat of it.
func (m *machine) classify(a evArrival) (arrival, error) {
	o := a.in.offer
	x := arrival{evArrival: a, o: o, kind: arrivalNew, ack: ackStored}
	if m.ep.e.mayHold(m.ep.config(), a.qos) {
		x.ack = ackHeld
	}
	repeats := func(p *pending) bool { return p != nil && !p.o.Internal && p.o.ID == o.ID }
	switch {
	case a.in.reject != nil:
		x.kind = arrivalRefused
	case o.ID == "":
	// While a result commit is retried, the offer waiting behind it may carry the same id (a 7/CMP
	// transient failure sent again): it is the one a repeat joins.
	case repeats(m.next):
		x.kind = arrivalRepeatsWaiting
	case repeats(m.running):
		x.kind = arrivalRepeatsRunning
	default:
		h, seen, err := m.handled(o.ID)
		if err != nil {
			return x, fmt.Errorf("read handled ids: %w", err)
		}
		if seen {
			x.kind, x.h = arrivalHandled, h
		}
	}
	return x, nil
}

// onRefused answers a refused message with its refusal, recorded for its id.
func (m *machine) onRefused(x arrival) {
	e, ep, o := m.ep.e, m.ep, x.o
	e.log.Warn("configuration refused", "endpoint", ep.key, "id", o.Text, "topic", x.topic, "reason", x.in.reject.Status)
	x.results.notify(*x.in.reject)
	ep.stats.count(x.in.reject.Code)
	if o.ID != "" {
		m.j.setHandled(o.ID, store.Handled{Status: x.in.reject.Status, Code: x.in.reject.Code})
	}
	m.noteAnswer(o, *x.in.reject)
	m.j.answer(e, ep, o, *x.in.reject, x.ack == ackHeld)
	m.j.waiters = append(m.j.waiters, x.receipt)
	m.commitSoon(x.ack)
}

// noteAnswer records r, the answer sent for o without an apply (a refusal, a re-confirmation), as
// the endpoint's last answer, in the commit that makes the answer durable: status shows what the
// server was told last, not the "ok" of an earlier configuration. The applied configuration stays
// as it is. A damaged state record is left for the next result to rewrite (status keeps saying
// why).
func (m *machine) noteAnswer(o *store.Offer, r Result) {
	st := m.current()
	if st.Damaged != "" {
		return
	}
	st.LastText, st.LastStatus, st.LastCode, st.LastAt = o.Text, r.Status, r.Code, m.ep.e.opt.Clock.Now()
	m.j.setState(st)
}

// onRepeatOfRunning takes the id of the offer being applied, again. In 7/CMP a server sending it
// while a newer one waits has changed its mind: the waiting one is superseded and this one ends on
// disk.
func (m *machine) onRepeatOfRunning(x arrival) {
	e := m.ep.e
	if m.next != nil && e.dia.lastWordWins() {
		m.supersede(m.next, x.o)
		m.next = nil
	}
	if m.phase != retrying {
		m.join(m.running, x)
		return
	}
	// Its result is recorded and waits for its commit. Joining would store the offer as pending
	// again after its deletion, or hold a receipt on an offer whose receipts were handed over
	// already: the repeat is answered with the result in that commit, unless it is to be applied
	// again, as a new offer behind the commit. The state is the one the result leaves (recordResult
	// put it in the journal, which a failed commit keeps).
	r, again := m.reanswer(store.Handled(m.result.r), x, *m.j.state, m.next != nil)
	if again {
		m.onNew(x)
		return
	}
	m.j.answer(e, m.ep, x.o, r, x.ack == ackHeld)
	x.results.notify(r)
	m.j.waiters = append(m.j.waiters, x.receipt)
}

// onHandled answers an id handled before with what is true now, or applies it again (reanswer).
func (m *machine) onHandled(x arrival) {
	e, ep, o := m.ep.e, m.ep, x.o
	r, again := m.reanswer(x.h, x, m.current(), m.running != nil || m.next != nil)
	if again {
		e.log.Info("configuration handled before is applied again", "endpoint", ep.key, "id", o.Text, "topic", x.topic, "was", x.h.Status)
		m.onNew(x)
		return
	}
	e.log.Warn("duplicate id confirmed again", "endpoint", ep.key, "id", o.Text, "topic", x.topic, "status", r.Status)
	m.noteAnswer(o, r)
	m.j.reanswer(e, ep, o, r, x.ack == ackHeld)
	x.results.notify(r)
	m.j.waiters = append(m.j.waiters, x.receipt)
	m.commitSoon(x.ack)
}

// reanswer decides what an id handled before with h gets now, st being the endpoint's state and
// otherPending telling whether another offer waits or is being written: the stored outcome, or (again) to be applied again. An answer never claims what is not true now
// (contract §3): a stored ok for a configuration that is no longer the one in place is answered as
// superseded by the one in place; a configuration that answers one of the agent's own requests is
// the server's latest word and is applied again when it is not the one in place; and the dialect
// may apply it again in other cases (7/CMP: whatever the server sends is its latest word, unless it
// was refused for what it is).
func (m *machine) reanswer(h store.Handled, x arrival, st store.EndpointState, otherPending bool) (r Result, again bool) {
	d := m.ep.e.dia
	inPlace := st.AppliedHash != "" && st.AppliedID == x.o.ID
	switch {
	case x.in.own && !inPlace:
		return Result{}, true
	case d.again(h, x.o, st, otherPending):
		return Result{}, true
	case h.Code == store.CodeOK && !inPlace:
		return d.superseded(&store.Offer{ID: st.AppliedID}), false
	}
	return Result(h), false
}

// current is the endpoint's state as the machine last decided it: the committed state, or the one a
// result whose commit is being retried leaves.
func (m *machine) current() store.EndpointState {
	if m.j.state != nil {
		return *m.j.state
	}
	return m.state()
}

// onNew applies a new offer now, or makes it wait behind the one being applied, superseding an older
// one that waited. A stored offer is committed as pending first; a held one waits unstored.
func (m *machine) onNew(x arrival) {
	e, o := m.ep.e, x.o
	if r := m.rollback(o); r != nil {
		x.in.reject = r
		m.onRefused(x)
		return
	}
	o.Seq = e.nextSeq()
	p := &pending{o: o, ack: ackHeld, waiters: []*Receipt{x.receipt}, results: x.results}
	// A removed endpoint's offer is not stored: it is dropped at the endpoint's stop, which
	// releases the receipt (the broker forgets it).
	if x.ack == ackStored && !m.removing {
		m.store(p)
	}
	// A stopping endpoint starts nothing: the offer waits in next, which close releases (removed)
	// or leaves to the broker and the database (the agent stopping).
	if m.phase == idle && m.next == nil && !m.quitting {
		if p.ack == ackStored {
			if m.commitAt(StepReceived) != committed {
				// Not applied: the broker delivers it again. Its record must not reach the
				// database with a later commit either, with nothing in memory to apply it.
				m.j.truncate(x.mark)
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
	if p.ack == ackStored {
		m.commitAt(StepReceived)
	}
}

// join merges a repeated arrival into the offer p it repeats: one more route to answer, one more
// receipt to release with it. A repeat that is not held makes p stored, with all its routes.
func (m *machine) join(p *pending, x arrival) {
	for _, r := range x.o.Routes {
		p.o.AddRoute(r)
	}
	p.results = append(p.results, x.results...)
	m.ep.e.log.Info("configuration received again while pending", "endpoint", m.ep.key, "id", x.o.Text, "topic", x.topic)
	if x.ack == ackHeld {
		p.waiters = append(p.waiters, x.receipt)
		return
	}
	m.store(p)
	m.j.waiters = append(m.j.waiters, x.receipt)
	m.commitNow()
}

// store makes p a stored offer: its record goes in with the journal's next commit, and its held
// receipts with it.
//
// A stored offer is never left behind a held one of the same endpoint, so the offer being applied
// is stored first when it is held. Otherwise a crash would leave the newer one in the database and
// the older one with the broker, which delivers it again (its PUBACK was held, and every later
// one behind it) after the newer one has been recovered: it would read as the newest and
// supersede it. Stored, the older one is recovered first, and its delivery joins it.
func (m *machine) store(p *pending) {
	if r := m.running; r != nil && r != p && len(r.waiters) > 0 {
		m.store(r)
	}
	p.ack = ackStored
	m.j.putPending(p.o)
	m.j.waiters = append(m.j.waiters, p.waiters...)
	p.waiters = nil
}

// supersede answers old as replaced by newer, in the next commit.
func (m *machine) supersede(old *pending, newer *store.Offer) {
	e := m.ep.e
	r := e.dia.superseded(newer)
	if old.o.ID != "" && !old.o.Internal { // an internal offer's id is the applied one's: kept
		m.j.setHandled(old.o.ID, store.Handled(r))
	}
	if !old.o.Internal {
		m.j.answer(e, m.ep, old.o, r, old.ack != ackStored)
		m.ep.stats.count(r.Code)
	}
	old.results.notify(r)
	if old.ack == ackStored {
		m.j.deletePending(old.o.Seq)
	}
	m.j.waiters = append(m.j.waiters, old.waiters...)
	old.waiters = nil
	e.log.Warn("configuration superseded", "endpoint", m.ep.key, "superseded", old.o.Text, "by", newer.Text)
}

// handled looks an id up among the outcomes not yet committed, then in the store.
func (m *machine) handled(id string) (store.Handled, bool, error) {
	if h, ok := m.j.handled[id]; ok {
		return h, true, nil
	}
	var (
		h  store.Handled
		ok bool
	)
	err := m.ep.e.store.View(func(tx *store.Tx) error {
		var err error
		h, ok, err = tx.Handled(m.ep.key, id)
		return err
	})
	return h, ok, err
}

// holding reports whether the machine holds acknowledgements back: a held offer's, a held repeat's
// that joined an offer (stored or not), or the held answers of repeats and refusals that wait for
// the commit of the apply in progress.
func (m *machine) holding() bool {
	for _, p := range []*pending{m.running, m.next} {
		if p != nil && len(p.waiters) > 0 {
			return true
		}
	}
	return m.phase == applying && len(m.j.waiters) > 0
}

// releaseHolds ends the holds once Options.HoldBound has passed: the offers with held receipts are
// stored (again, for a stored one a held repeat joined: with the repeat's route), and their
// receipts released with that commit, as on the stored path. The apply goes on; its result then
// deletes the record. A commit that fails changes nothing (the receipts stay held, for the result's
// commit or the next try). While a result's commit is retried nothing can be stored before it.
//
// A removed endpoint is no exception: its stop waits for the apply in progress, which may not end
// (a stalled file system). Its waiting offer stored here is deleted at that stop (shutdown), and a
// record a crash leaves is dropped at the next start, the endpoint being no longer configured.
func (m *machine) releaseHolds() {
	if m.phase == retrying || !m.holding() {
		return
	}
	e := m.ep.e
	mark := len(m.j.ops)
	type was struct {
		p   *pending
		ack ack
	}
	var stored []was
	for _, p := range []*pending{m.running, m.next} {
		if p != nil && len(p.waiters) > 0 {
			stored = append(stored, was{p, p.ack})
			p.ack = ackStored
			m.j.putPending(p.o)
		}
	}
	if err := m.commit(); err != nil {
		m.j.truncate(mark)
		for _, w := range stored {
			w.p.ack = w.ack
		}
		e.log.Error("cannot store configurations whose acknowledgement is held; they stay held", "endpoint", m.ep.key, "err", err)
		return
	}
	for _, w := range stored {
		e.log.Info("apply takes longer than the hold bound: configuration stored and acknowledged", "endpoint", m.ep.key, "id", w.p.o.Text, "bound", e.opt.HoldBound)
		m.j.waiters = append(m.j.waiters, w.p.waiters...)
		w.p.waiters = nil
		m.ep.stats.holdsReleased.Add(1)
	}
	m.j.committed()
}

// commitSoon commits the journal now, unless an apply runs whose commit is near and the journal's
// receipts may wait for it (they are held, which only the held path may do, for HoldBound at most).
func (m *machine) commitSoon(a ack) {
	if a == ackHeld && m.phase == applying {
		return
	}
	m.commitNow()
}

// commitNow commits the journal; on failure the receipts waiting on it are released with the error
// (the transport then does not acknowledge them, and the broker delivers them again).
func (m *machine) commitNow() commitOutcome { return m.commitAt("") }

// commitAt is commitNow with the pause point step between the commit and the release.
func (m *machine) commitAt(step string) commitOutcome {
	if m.phase == retrying {
		// The result's commit is being retried, and takes this journal along (receipts included)
		// when it succeeds; a failure here must not drop the result with it.
		return deferred
	}
	if err := m.commit(); err != nil {
		m.ep.e.log.Error("cannot store received configuration; it stays unacknowledged", "endpoint", m.ep.key, "err", err)
		m.j.fail(err)
		return commitFailed
	}
	if step != "" {
		m.ep.e.opt.Pause(step)
	}
	m.j.committed()
	return committed
}
