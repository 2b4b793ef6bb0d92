package engine

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cmx-agent/cmx-agent/store"
)

// Receipt tells the transport when a received message may be acknowledged to the broker: once Done
// is closed and Err is nil. An Err means the message could not be stored; it must stay
// unacknowledged (and so must every message after it, since acknowledgements go out in order).
type Receipt struct {
	once sync.Once
	done chan struct{}
	err  error
	held *atomic.Int64 // counts the receipts held until a result commit; nil when not held
	// conn and gen are the connection the message came on, marked failed when the receipt is
	// released with an error.
	conn *connState
	gen  uint64
}

func newReceipt(conn *connState, gen uint64) *Receipt {
	return &Receipt{done: make(chan struct{}), conn: conn, gen: gen}
}

// Done is closed when the message's fate is decided.
func (r *Receipt) Done() <-chan struct{} { return r.done }

// Err is nil when the message may be acknowledged; valid after Done.
func (r *Receipt) Err() error { return r.err }

// hold marks r as held until a result commit, so the engine knows how many acknowledgements it is
// keeping from the broker's in-flight window.
func (r *Receipt) hold(n *atomic.Int64) {
	r.held = n
	n.Add(1)
}

func (r *Receipt) release(err error) {
	r.once.Do(func() {
		r.err = err
		if err != nil && r.conn != nil {
			r.conn.fail(r.gen)
		}
		if r.held != nil {
			r.held.Add(-1)
		}
		close(r.done)
	})
}

// journal is what an endpoint has decided and not yet committed: store operations, in order, and
// the receipts released once they are durable. Every operation is a plain put or delete, so running
// it twice (Store.Batch may) is the same as once.
type journal struct {
	ops     []journalOp
	waiters []*Receipt
	// handled and state shadow the store until the commit, so a decision taken before it sees them.
	handled  map[string]store.Handled
	state    *store.EndpointState
	accepted *store.Accepted // signed.go
	// answers are in the outbox already (published early or not); the commit makes them durable.
	answers []*outEntry
	// puts are the indexes in ops of each offer's uncommitted record, by seq. A deletion takes
	// them out (nil): while commits fail, pushes that supersede each other would otherwise keep
	// every superseded body in memory until the disk came back.
	puts map[uint64][]int
}

// journalOp is one of an endpoint's store operations; the commit passes the endpoint's key.
type journalOp func(tx *store.Tx, ep string) error

func (j *journal) setHandled(id string, h store.Handled) {
	if j.handled == nil {
		j.handled = map[string]store.Handled{}
	}
	j.handled[id] = h
	j.ops = append(j.ops, func(tx *store.Tx, ep string) error { return tx.SetHandled(ep, id, h) })
}

func (j *journal) setState(st store.EndpointState) {
	st.Damaged = "" // written, the record is whole again
	j.state = &st
	j.ops = append(j.ops, func(tx *store.Tx, ep string) error { return tx.SetState(ep, st) })
}

// addHistory records an applied configuration in the endpoint's history, in the result's commit.
func (j *journal) addHistory(h HistoryEntry) {
	j.ops = append(j.ops, func(tx *store.Tx, ep string) error { return tx.AddHistory(ep, h) })
}

func (j *journal) setApplied(body, raw []byte, rendered, sealed bool) {
	j.ops = append(j.ops, func(tx *store.Tx, ep string) error {
		if err := tx.SetApplied(ep, body, raw, rendered); err != nil {
			return err
		}
		return tx.SetBodySealed(ep, sealed)
	})
}

func (j *journal) deletePrior() {
	j.ops = append(j.ops, func(tx *store.Tx, ep string) error { return tx.DeletePrior(ep) })
}

func (j *journal) putPending(o *store.Offer) {
	c := *o
	c.Routes = append([]store.Route(nil), o.Routes...)
	if j.puts == nil {
		j.puts = map[uint64][]int{}
	}
	j.puts[o.Seq] = append(j.puts[o.Seq], len(j.ops))
	j.ops = append(j.ops, func(tx *store.Tx, ep string) error { return tx.SetPending(ep, &c) })
}

// deletePending deletes the offer's record: its puts in this journal are dropped, and the deletion
// still goes in, for a record an earlier commit stored.
func (j *journal) deletePending(seq uint64) {
	for _, i := range j.puts[seq] {
		j.ops[i] = nil
	}
	delete(j.puts, seq)
	j.ops = append(j.ops, func(tx *store.Tx, ep string) error { return tx.DeletePending(ep, seq) })
}

func (j *journal) setServerState(st ServerState) {
	j.ops = append(j.ops, func(tx *store.Tx, ep string) error { return tx.SetServerState(ep, st) })
}

// answer builds the answers for o with r and puts them in the outbox. early: every receipt of o is
// held until this journal is committed, so the answer may be published before the commit: a crash
// before it leaves o unacknowledged, the broker delivers it again, and it is answered again.
func (j *journal) answer(e *Engine, ep *endpoint, o *store.Offer, r Result, early bool) {
	for _, m := range e.dia.answers(ep, o, r, e.nextID) {
		j.answers = append(j.answers, e.out.add(m, early))
	}
}

// reanswer is answer for an id handled before, answered again. It replaces no newer report still
// unsent (7/CMP replaces an endpoint's unsent applied report with the next): an old configId sent
// again must not take the place of the report of the configuration applied since.
func (j *journal) reanswer(e *Engine, ep *endpoint, o *store.Offer, r Result, early bool) {
	for _, m := range e.dia.answers(ep, o, r, e.nextID) {
		m.Replaces = ""
		j.answers = append(j.answers, e.out.add(m, early))
	}
}

// fail releases every waiting receipt with err: nothing of the journal was stored, and the
// transport does not acknowledge them, so the broker delivers them again. The operations and
// answers stay for the next commit: the machine has acted on them (an offer superseded, a newer
// one waiting in its place), and forgetting them would leave the database behind memory, with a
// superseded offer's record to be applied again after a restart.
func (j *journal) fail(err error) {
	for _, r := range j.waiters {
		r.release(err)
	}
	j.waiters = nil
}

// truncate takes back the operations from mark on, which were not committed and must not be.
func (j *journal) truncate(mark int) {
	clear(j.ops[mark:]) // the closures hold their offers' bodies
	j.ops = j.ops[:mark]
	for seq, at := range j.puts {
		at = slices.DeleteFunc(at, func(i int) bool { return i >= mark })
		if len(at) == 0 {
			delete(j.puts, seq)
		} else {
			j.puts[seq] = at
		}
	}
}

// committed releases the receipts and makes the answers durable in the outbox.
func (j *journal) committed() {
	for _, a := range j.answers {
		a.ob.committed(a)
	}
	for _, r := range j.waiters {
		r.release(nil)
	}
	*j = journal{}
}
