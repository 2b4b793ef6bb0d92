// Package engine is cmx-agent's core: the endpoints and their state machines, coalescing and
// deduplication, the apply pipeline, drift repair and the outbox. It imports no MQTT library and no
// storage library: a transport hands it received messages (Deliver) and is told, through a Receipt,
// when each may be acknowledged; it reads what to send from the Outbox and reports what the broker
// acknowledged. What it commits goes through package store, the agent's database.
//
// The order of durable steps, and why a crash between any two of them loses nothing, is in
// docs/durability.md; the code marks each step with the name of its test pause point (Step*).
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cmx-agent/cmx-agent/apply"
	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/sealed"
	"github.com/cmx-agent/cmx-agent/store"
)

// Pause points: the durable steps of one configuration, in order. Options.Pause is called with each.
const (
	// StepReceived: a configuration has arrived and is not acknowledged yet; when it is not held
	// (QoS 0, a clean session, an endpoint with a hook or validate, too many acknowledgements held)
	// it is committed as pending, otherwise nothing of it is durable yet.
	StepReceived = "received"
	StepSynced   = "synced"  // new file written and fsynced under its temporary name
	StepRenamed  = "renamed" // file renamed into place and its folder fsynced, result not committed
	// StepCommitted: the result, the handled id and the answers are committed; the acknowledgement
	// of a held configuration is not released yet.
	StepCommitted = "committed"
	StepPublished = "published" // answer acknowledged by the broker, not yet deleted from the outbox
)

// Options are the engine's collaborators; the zero value of each field is a sensible default.
type Options struct {
	Logger *slog.Logger
	// Pause, when set, is called at each durable step (the Step* names); crash tests make it block so
	// they can kill the process exactly there.
	Pause func(step string)
	// Clock is the wall clock, for timestamps shown to people and the durations the metrics show,
	// and the source of every timer (backoffs, debounces, bounds, hook timeouts); default
	// clock.Real.
	Clock clock.Clock
	// LockTimeout bounds the wait for the database lock (default 1 s).
	LockTimeout time.Duration
	// PullTimeout is how long an unanswered request waits before it is repeated (default 30 s,
	// doubling to 10 min).
	PullTimeout time.Duration
	// HoldBound bounds how long an acknowledgement is held for a quick apply (default
	// DefaultHoldBound): an apply still running then has its configuration stored and
	// acknowledged, as on the stored path, so one slow endpoint does not hold every later PUBACK.
	HoldBound time.Duration
	// HandledIDs bounds the remembered ids per endpoint (default 1000).
	HandledIDs int
	// MaxHeld bounds the acknowledgements held back until a result commit (default 5, half of
	// RabbitMQ's in-flight window of 10 and a quarter of mosquitto's 20): past it a configuration is
	// committed on arrival and acknowledged at once, so the broker keeps sending.
	MaxHeld int
	// OnChange, when set, is called after a configuration is applied, so the caller can report
	// status. It must not block.
	OnChange func()
}

// maxProcesses bounds the validate and hook commands that run at once across endpoints.
const maxProcesses = 16

// idLease is how many message ids one commit of the counter covers.
const idLease = 1000

// Engine is the core of one running agent.
type Engine struct {
	kaa     config.Kaa
	agent   config.Agent
	log     *slog.Logger
	opt     Options
	store   *store.Store
	dia     dialect
	out     *Outbox
	held    atomic.Int64 // receipts held until a result commit
	applies sync.WaitGroup
	procs   chan struct{} // process slots: bounds the validate and hook commands running at once

	mu      sync.RWMutex
	eps     map[string]*endpoint   // by key
	byToken map[string][]*endpoint // the same endpoints by token
	runCtx  context.Context
	running bool
	wg      sync.WaitGroup
	drift   *driftWatcher

	seq atomic.Uint64 // offer sequence numbers, from the database's at open

	idMu     sync.Mutex
	nextMsg  uint64 // next message id to hand out
	leaseEnd uint64 // ids up to here are leased in the database

	conn connState // the transport's connection as the engine sees it (conn.go)
	sig  *signing  // trusted keys and signature refusals (signed.go)

	identity       *sealed.Identity      // decrypts sealed values; kept across reloads
	sealedRefusals refusals[sealed.Kind] // configurations refused for their sealed values (sealed.go)

	applyTimes histogram // durations of the pipeline, for metrics

	// forget holds the pending records of removed endpoints whose deletion could not be committed
	// when they stopped; the next commit deletes them, and so does an endpoint's start.
	forgetMu sync.Mutex
	forget   map[string][]uint64

	// failCommit, set by tests, makes a commit fail as a full or read-only state disk would.
	failCommit func() error
}

// New opens the state database and prepares the engine; it starts nothing.
func New(cfg *config.Config, opt Options) (*Engine, error) {
	opt = opt.withDefaults()
	d, err := newDialect(cfg)
	if err != nil {
		return nil, err
	}
	st, err := openStore(cfg.Agent.StateDir, opt)
	if err != nil {
		return nil, err
	}
	id, err := loadIdentity(st, cfg.Agent.StateDir)
	if err != nil {
		st.Close()
		return nil, err
	}
	e := &Engine{
		identity:       id,
		kaa:            cfg.Kaa,
		agent:          cfg.Agent,
		log:            opt.Logger,
		opt:            opt,
		store:          st,
		dia:            d,
		procs:          make(chan struct{}, maxProcesses),
		eps:            map[string]*endpoint{},
		byToken:        map[string][]*endpoint{},
		sig:            newSigning(cfg.Trust.Loaded, int(cfg.Agent.MaxPayload)),
		sealedRefusals: newRefusals(sealed.Kinds),
	}
	if err := e.readState(cfg.Endpoints); err != nil {
		st.Close()
		return nil, fmt.Errorf("read state: %w", err)
	}
	for _, ec := range cfg.Endpoints {
		ep := e.newEndpoint(ec)
		e.eps[ep.key] = ep
	}
	e.reindex()
	return e, nil
}

// loadIdentity reads the agent's identity in dir, making it only when the database has never had
// one (a new state folder, or an upgrade from a version without sealed values): configurations may
// have been sealed to an identity the database knew, and a new key would silently break them all.
func loadIdentity(st *store.Store, dir string) (*sealed.Identity, error) {
	var had bool
	if err := st.View(func(tx *store.Tx) error { had = tx.HasIdentity(); return nil }); err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	id, err := sealed.Load(dir, !had)
	if err != nil || had {
		return id, err
	}
	if err := st.Update(func(tx *store.Tx) error { return tx.SetIdentity() }); err != nil {
		return nil, fmt.Errorf("identity: record it: %w", err)
	}
	return id, nil
}

// Recipient is the agent's age recipient (age1...), to which configurations seal values.
func (e *Engine) Recipient() string { return e.identity.Recipient() }

// withDefaults fills in the options left zero.
func (opt Options) withDefaults() Options {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	opt.Clock = clock.OrReal(opt.Clock)
	if opt.Pause == nil {
		opt.Pause = func(string) {}
	}
	if opt.LockTimeout <= 0 {
		opt.LockTimeout = time.Second
	}
	if opt.PullTimeout <= 0 {
		opt.PullTimeout = 30 * time.Second
	}
	if opt.HoldBound <= 0 {
		opt.HoldBound = DefaultHoldBound
	}
	if opt.MaxHeld <= 0 {
		opt.MaxHeld = 5
	}
	return opt
}

func newDialect(cfg *config.Config) (dialect, error) {
	lim := cmx.DefaultLimits(int(cfg.Agent.MaxPayload))
	switch cfg.Kaa.Dialect {
	case config.DialectCMX3:
		return cmx3{limits: lim}, nil
	case config.DialectCMP7:
		return cmp7{limits: lim}, nil
	}
	return nil, fmt.Errorf("dialect %q is not supported", cfg.Kaa.Dialect)
}

// openStore opens the state database and logs what opening it repaired.
func openStore(dir string, opt Options) (*store.Store, error) {
	st, err := store.OpenStore(dir, opt.LockTimeout, opt.HandledIDs)
	if err != nil {
		return nil, err
	}
	if r := st.Recovered(); r != nil {
		opt.Logger.Error("state database was unreadable: moved aside, starting with fresh state; the latest configuration is requested at connect",
			"moved_to", r.MovedTo, "cause", r.Cause)
	}
	for _, d := range st.MigrationDropped() {
		opt.Logger.Warn("state database of an earlier layout: a damaged record was left out of its migration", "record", d)
	}
	return st, nil
}

// readState reads the outbox and the counters, and drops the pending offers of endpoints that are
// not among eps.
func (e *Engine) readState(eps []config.Endpoint) error {
	var (
		stored  []OutMsg
		lastOut uint64
		dropped []string
	)
	err := e.store.Update(func(tx *store.Tx) error {
		var err error
		if stored, err = tx.Outbox(0); err != nil {
			return err
		}
		// One walk of the pending offers' keys serves both: the seqs of the dropped ones still
		// count, so that no seq is handed out twice.
		pending := tx.PendingSeqs()
		if dropped, err = dropUnconfigured(tx, eps, pending); err != nil {
			return err
		}
		lastOut = tx.LastOutboxSeq()
		e.seq.Store(tx.LastSeqOf(pending))
		last, err := tx.LeaseIDs(idLease)
		e.nextMsg, e.leaseEnd = last+1, last+idLease
		return err
	})
	if err != nil {
		return err
	}
	for _, key := range dropped {
		e.log.Info("dropped the pending configurations of an endpoint no longer configured", "endpoint", key)
	}
	e.out = newOutbox(lastOut, stored, e.opt.Clock)
	return nil
}

// dropUnconfigured deletes the pending offers (pending: Tx.PendingSeqs) of the endpoints that are
// not among eps and returns their keys. A configuration received for an endpoint that is no longer configured is not
// applied should the endpoint come back: it then asks for its latest configuration, as after a
// reload that removed it.
func dropUnconfigured(tx *store.Tx, eps []config.Endpoint, pending map[string][]uint64) ([]string, error) {
	configured := map[string]bool{}
	for _, ec := range eps {
		configured[ec.Key()] = true
	}
	var dropped []string
	for key, seqs := range pending {
		if configured[key] {
			continue
		}
		for _, seq := range seqs {
			if err := tx.DeletePending(key, seq); err != nil {
				return nil, err
			}
		}
		dropped = append(dropped, key)
	}
	return dropped, nil
}

// Close releases the database, and stops the repeats of requests. Call it after Run has returned.
func (e *Engine) Close() error {
	for _, ep := range e.endpointList() {
		ep.req.cancel(0)
	}
	return e.store.Close()
}

// Outbox is what the transport sends.
func (e *Engine) Outbox() *Outbox { return e.out }

// Run starts the endpoints (each first finishing what a crash left pending, then checking its
// output for drift) and the drift watcher, and returns when ctx ends and every apply in progress
// has been committed.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	e.runCtx, e.running = ctx, true
	e.drift = newDriftWatcher(e)
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.drift.run(ctx)
	}()
	for _, ep := range e.endpointList() {
		e.startEndpoint(ctx, ep)
	}
	<-ctx.Done()
	e.mu.Lock()
	e.running = false
	e.mu.Unlock()
	e.wg.Wait()
	e.applies.Wait()
	// What the broker acknowledged meanwhile is deleted now rather than sent again after the
	// restart.
	e.flushAcked()
	return nil
}

// startEndpoint removes what a crash left beside ep's output and starts its machine with the offers
// a crash left pending.
func (e *Engine) startEndpoint(ctx context.Context, ep *endpoint) {
	cfg := ep.config()
	if n, err := apply.RemoveTemps(cfg.Output); err != nil {
		e.log.Warn("cannot remove temporary files", "endpoint", ep.key, "err", err)
	} else if n > 0 {
		e.log.Info("removed temporary files left by a crash", "endpoint", ep.key, "count", n)
	}
	var offers []*store.Offer
	forgotten := e.forgotten(ep.key)
	read := e.store.View
	if len(forgotten) > 0 {
		read = e.store.Update
	}
	if err := read(func(tx *store.Tx) error {
		for _, seq := range forgotten {
			if err := tx.DeletePending(ep.key, seq); err != nil {
				return err
			}
		}
		var err error
		offers, err = tx.Pending(ep.key)
		return err
	}); err != nil {
		e.log.Error("cannot read pending configurations", "endpoint", ep.key, "err", err)
		// The offers that read are still applied (the pull at connect brings the newest anyway);
		// nothing can apply the others, and left in place they would read as waiting forever.
		var bad *store.UnreadablePendingError
		if errors.As(err, &bad) {
			if err := e.store.Update(func(tx *store.Tx) error {
				for _, seq := range bad.Seqs {
					if err := tx.DeletePending(ep.key, seq); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				e.log.Error("cannot delete the unreadable pending configurations", "endpoint", ep.key, "err", err)
			} else {
				e.log.Warn("unreadable pending configurations deleted", "endpoint", ep.key, "count", len(bad.Seqs))
			}
		}
	}
	if len(offers) > 0 {
		ep.postFirst(evRecovery{offers: offers})
	}
	ep.post(evOptions{cfg: cfg}) // applies the stored configuration again if its options changed
	ep.post(evDrift{})
	ep.start(ctx, &e.wg)
}

func (e *Engine) endpointList() []*endpoint {
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := make([]*endpoint, 0, len(e.eps))
	for _, ep := range e.eps {
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

// reindex rebuilds the token index after e.eps changed; e.mu must be held for writing.
func (e *Engine) reindex() {
	e.byToken = make(map[string][]*endpoint, len(e.eps))
	for _, ep := range e.eps {
		e.byToken[ep.token] = append(e.byToken[ep.token], ep)
	}
}

// Filters are the topic filters to subscribe (QoS 1) for the endpoints of the moment.
func (e *Engine) Filters() []string {
	return e.dia.filters(e.endpointList())
}

// Message is one PUBLISH received from the broker.
type Message struct {
	Topic string
	QoS   byte
	// Payload is kept, not copied (an offer's body is a slice of it): the caller must not change
	// it afterwards. paho allocates each message's payload of its own.
	Payload []byte
	// Size is the payload's length as the broker sent it: larger than len(Payload) when the
	// transport kept only the beginning of a payload over the limit.
	Size int
	// Conn is the generation of the connection the message came on (0: the one the engine was
	// last told of by Online). Once a message could not be stored, nothing more is taken from
	// that connection.
	Conn uint64
}

// Deliver takes a received message; the transport calls it in the order the messages arrived and
// acknowledges each once its Receipt says so. It never blocks on the store.
func (e *Engine) Deliver(m Message) *Receipt {
	gen := m.Conn
	if gen == 0 {
		gen = e.conn.current()
	}
	r := newReceipt(&e.conn, gen)
	if e.conn.hasFailed(gen) {
		r.release(errAfterFailure)
		return r
	}
	if m.Size < len(m.Payload) {
		m.Size = len(m.Payload)
	}
	t, ok := cmx.SplitTopic(m.Topic, e.kaa.AppVersion, e.kaa.Extension)
	if !ok {
		r.release(nil)
		return r
	}
	e.mu.RLock()
	eps := e.byToken[t.Token]
	e.mu.RUnlock()
	for _, ep := range eps {
		if !e.dia.isConfig(ep, t.Rest) {
			continue
		}
		ep.answered.Store(true)
		in := e.dia.decode(ep, m.Topic, m.QoS, m.Payload, m.Size)
		id := ""
		if in.offer != nil {
			id = in.offer.Text
		}
		e.log.Debug("configuration received", "endpoint", ep.key, "id", id, "topic", m.Topic, "qos", m.QoS, "bytes", m.Size)
		ep.post(evArrival{in: in, topic: m.Topic, qos: m.QoS, size: m.Size, receipt: r})
		return r
	}
	r.release(nil) // not for the agent (its own answers come back on overlapping filters)
	return r
}

// mayHold reports whether a message for an endpoint with options c may be held unacknowledged
// until its result is committed, instead of being committed on arrival: only when the broker
// promises to deliver it again after a crash (QoS 1 on a persistent session), the apply is quick
// (no validate or hook to wait for), and few acknowledgements are held already.
func (e *Engine) mayHold(c config.Endpoint, qos byte) bool {
	return qos == 1 && e.conn.persistent() && len(c.Hook) == 0 && len(c.Validate) == 0 &&
		e.held.Load() < int64(e.opt.MaxHeld)
}

// commit commits j for ep, together with the deletion of the answers the broker has acknowledged.
// The caller then releases j (journal.committed), which lets the transport acknowledge.
func (e *Engine) commit(ep *endpoint, j *journal) error {
	if len(j.ops) == 0 && len(j.answers) == 0 {
		return nil
	}
	if e.failCommit != nil {
		if err := e.failCommit(); err != nil {
			return err
		}
	}
	acked := e.out.takeAcked()
	forget := e.takeForgotten()
	err := e.store.Batch(func(tx *store.Tx) error {
		for key, seqs := range forget {
			for _, seq := range seqs {
				if err := tx.DeletePending(key, seq); err != nil {
					return err
				}
			}
		}
		for _, op := range j.ops {
			if op == nil { // a record deleted before it was stored (journal.deletePending)
				continue
			}
			if err := op(tx, ep.key); err != nil {
				return err
			}
		}
		for _, a := range j.answers {
			if e.out.storable(a) {
				if err := tx.PutOutbox(a.msg); err != nil {
					return err
				}
			}
		}
		return tx.DeleteOutbox(acked...)
	})
	if err != nil {
		e.out.giveBack(acked)
		e.giveBackForgotten(forget)
		return err
	}
	return nil
}

// forgetPending has the pending record seq of the removed endpoint key deleted by the next commit.
func (e *Engine) forgetPending(key string, seq uint64) {
	e.forgetMu.Lock()
	defer e.forgetMu.Unlock()
	if e.forget == nil {
		e.forget = map[string][]uint64{}
	}
	e.forget[key] = append(e.forget[key], seq)
}

// takeForgotten hands the records to delete to a commit, which gives them back if it fails.
func (e *Engine) takeForgotten() map[string][]uint64 {
	e.forgetMu.Lock()
	defer e.forgetMu.Unlock()
	f := e.forget
	e.forget = nil
	return f
}

func (e *Engine) giveBackForgotten(f map[string][]uint64) {
	for key, seqs := range f {
		for _, seq := range seqs {
			e.forgetPending(key, seq)
		}
	}
}

// forgotten takes the records of key to delete before the endpoint starts again.
func (e *Engine) forgotten(key string) []uint64 {
	e.forgetMu.Lock()
	defer e.forgetMu.Unlock()
	seqs := e.forget[key]
	delete(e.forget, key)
	return seqs
}

// flushAcked deletes the answers the broker has acknowledged, when no other commit took them: at
// the end of Run.
func (e *Engine) flushAcked() {
	acked := e.out.takeAcked()
	if len(acked) == 0 {
		return
	}
	if err := e.store.Batch(func(tx *store.Tx) error { return tx.DeleteOutbox(acked...) }); err != nil {
		e.log.Warn("cannot delete sent answers from the outbox; they may be sent again", "err", err)
		e.out.giveBack(acked)
	}
}

func (e *Engine) nextSeq() uint64 { return e.seq.Add(1) }

// nextID hands out a message id. Ids come from a lease recorded in the database, so they never
// repeat across restarts; a lease used up is extended with a commit of its own.
func (e *Engine) nextID() uint64 {
	e.idMu.Lock()
	defer e.idMu.Unlock()
	if e.nextMsg > e.leaseEnd {
		err := e.store.Update(func(tx *store.Tx) error {
			last, err := tx.LeaseIDs(idLease)
			if err == nil {
				e.nextMsg, e.leaseEnd = max(e.nextMsg, last+1), last+idLease
			}
			return err
		})
		if err != nil {
			// Ids past the lease could repeat after a crash; better a request id used twice
			// than no request.
			e.log.Error("cannot extend the message id lease", "err", err)
		}
	}
	id := e.nextMsg
	e.nextMsg++
	return id
}

// stateOf returns ep's committed state; a damaged record gives the state rebuilt from what else is
// stored (Tx.StateOrRebuilt), which the endpoint's next result replaces.
func (e *Engine) stateOf(ep *endpoint) store.EndpointState {
	var st store.EndpointState
	if err := e.store.View(func(tx *store.Tx) error {
		st = tx.StateOrRebuilt(ep.key)
		return nil
	}); err != nil {
		e.log.Error("cannot read endpoint state", "endpoint", ep.key, "err", err)
	}
	if st.Damaged != "" {
		e.log.Error("cannot read endpoint state; going on with the applied bytes' hash until the next result rewrites it",
			"endpoint", ep.key, "err", st.Damaged)
	}
	return st
}

// changed tells Options.OnChange that an applied configuration changed.
func (e *Engine) changed() {
	if e.opt.OnChange != nil {
		e.opt.OnChange()
	}
}

// Healthy reports whether the engine can still do its work: the store answers within ctx.
func (e *Engine) Healthy(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- e.store.View(func(*store.Tx) error { return nil }) }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("state database: %w", err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("state database does not answer: %w", ctx.Err())
	}
}

func prefixOf(k config.Kaa, token string) string { return cmx.Prefix(k.AppVersion, k.Extension, token) }
