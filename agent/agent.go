// Package agent is cmx-agent's daemon: the MQTT session, one state machine per endpoint, and the
// bbolt store that holds applied state, pending offers and the outbox of answers.
//
// The order of durable steps for one configuration, and why a crash between any two of them loses
// nothing, is written down in docs/durability.md; the code below marks each step with the name of the
// test pause point (Options.Pause) that stops the agent there.
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
)

// Pause points: the durable steps of one configuration, in order. Options.Pause is called with each.
const (
	StepReceived  = "received"  // offer committed to the store, not yet acknowledged to the broker
	StepSynced    = "synced"    // new file written and fsynced under its temporary name
	StepRenamed   = "renamed"   // file renamed into place and its folder fsynced, result not committed
	StepCommitted = "committed" // result and answer committed, answer not yet published
	StepPublished = "published" // answer acknowledged by the broker, not yet deleted from the outbox
)

// Options are the agent's collaborators; the zero value of each field is a sensible default.
type Options struct {
	Logger *slog.Logger
	// Pause, when set, is called at each durable step (the Step* names); crash tests make it block so
	// they can kill the process exactly there.
	Pause func(step string)
	// Now is the wall clock, used only for timestamps shown to people.
	Now func() time.Time
	// LockTimeout bounds the wait for the database lock (default 1 s).
	LockTimeout time.Duration
	// PullTimeout is how long an unanswered request waits before it is repeated (default 30 s,
	// doubling to 10 min).
	PullTimeout time.Duration
	// HandledIDs bounds the remembered ids per endpoint (default 1000).
	HandledIDs int
	// OnChange, when set, is called after the broker connection comes up or goes down and after a
	// configuration is applied, so the caller can report Status (systemd's STATUS=). It must not
	// block.
	OnChange func()
}

// Agent is one running cmx-agent.
type Agent struct {
	cfg   *config.Config
	log   *slog.Logger
	opt   Options
	store *Store
	dia   dialect

	mu        sync.RWMutex
	endpoints map[string]*endpoint   // by key
	byToken   map[string][]*endpoint // the same endpoints by token

	applySem chan struct{} // bounds parallel applies across endpoints
	recvSem  chan struct{} // bounds messages being committed at once
	outWake  chan struct{}
	sess     *session

	local // drift watching, reload and worker lifecycle (reload.go)
}

type endpoint struct {
	key    string // token, or token/name for a named configuration
	cfg    config.Endpoint
	prefix string
	wake   chan struct{}
	// answered is set when a configuration message arrives, so unanswered requests are repeated.
	answered atomic.Bool
	// lastRID is the request id of the latest configuration request (cmp7: an error answering an
	// older one is not repeated), and errRetry repeats a request the server refused.
	lastRID  atomic.Uint64
	errRetry errRetry

	// mu orders the receive transaction against the worker picking an offer, so a new offer never
	// supersedes one that is already being written.
	mu       sync.Mutex
	inflight uint64 // seq of the offer being applied, 0 when idle

	lifecycle // drift checks and stopping the worker (reload.go)
}

func (e *endpoint) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// New opens the state database and prepares the agent; it does not connect.
func New(cfg *config.Config, opt Options) (*Agent, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	opt.Logger = boundLogger(opt.Logger)
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Pause == nil {
		opt.Pause = func(string) {}
	}
	if opt.LockTimeout <= 0 {
		opt.LockTimeout = time.Second
	}
	if opt.PullTimeout <= 0 {
		opt.PullTimeout = 30 * time.Second
	}
	var d dialect
	switch cfg.Kaa.Dialect {
	case config.DialectCMX3:
		d = cmx3{limits: cmx.DefaultLimits(int(cfg.Agent.MaxPayload))}
	case config.DialectCMP7:
		d = newCMP7(cfg)
	default:
		return nil, fmt.Errorf("dialect %q is not supported yet", cfg.Kaa.Dialect)
	}
	st, err := OpenStore(cfg.Agent.StateDir, opt.LockTimeout, opt.HandledIDs)
	if err != nil {
		return nil, err
	}
	if r := st.Recovered(); r != nil {
		opt.Logger.Error("state database was unreadable: moved aside, starting with fresh state; the latest configuration is requested at connect",
			"moved_to", r.MovedTo, "cause", r.Cause)
	}
	a := &Agent{
		cfg:       cfg,
		log:       opt.Logger,
		opt:       opt,
		store:     st,
		dia:       d,
		endpoints: map[string]*endpoint{},
		applySem:  make(chan struct{}, 16),
		recvSem:   make(chan struct{}, 64),
		outWake:   make(chan struct{}, 1),
	}
	for _, ec := range cfg.Endpoints {
		ep := a.newEndpoint(ec)
		a.endpoints[ep.key] = ep
	}
	a.reindex()
	a.sess = newSession(a)
	return a, nil
}

// Close releases the database. Call it after Run has returned.
func (a *Agent) Close() error { return a.store.Close() }

// Run applies what a crash left pending, then connects and serves until ctx ends. It returns nil on
// a clean stop.
func (a *Agent) Run(ctx context.Context) error {
	// The workers, the drift watcher and the API stop with the session, even when it gives up on its own.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sess := a.startLocal(ctx)
	for _, ep := range a.endpointList() {
		a.startWorker(ctx, ep)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.serveAPI(ctx)
	}()
	err := sess.run(ctx)
	cancel()
	a.stopLocal()
	wg.Wait()
	return err
}

func (a *Agent) endpointList() []*endpoint {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]*endpoint, 0, len(a.endpoints))
	for _, ep := range a.endpoints {
		out = append(out, ep)
	}
	return out
}

// endpointByToken returns the endpoints of a token (several for cmp7 named configurations). It is on
// the path of every received message, so it reads an index rather than scanning all endpoints.
func (a *Agent) endpointByToken(token string) []*endpoint {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.byToken[token]
}

// reindex rebuilds the token index after a.endpoints changed; a.mu must be held for writing.
func (a *Agent) reindex() {
	a.byToken = make(map[string][]*endpoint, len(a.endpoints))
	for _, ep := range a.endpoints {
		a.byToken[ep.cfg.Token] = append(a.byToken[ep.cfg.Token], ep)
	}
}

func (a *Agent) wakeOutbox() {
	select {
	case a.outWake <- struct{}{}:
	default:
	}
}

// receive commits a configuration message for ep. This is the first durable step: only after it
// returns nil may the message be acknowledged to the broker.
func (a *Agent) receive(ep *endpoint, topic string, qos byte, payload []byte) error {
	in := a.dia.decode(ep, topic, qos, payload)
	if in.note != nil {
		if err := a.noteServer(ep, topic, *in.note); err != nil {
			return err
		}
	}
	if in.offer == nil {
		return nil
	}
	o := in.offer
	o.Received = a.opt.Now()
	var (
		logMsg  string
		logArgs []any
	)
	ep.mu.Lock()
	defer ep.mu.Unlock()
	err := a.store.Batch(func(tx *Tx) error {
		logMsg, logArgs = "", nil
		if o.ID != "" {
			status, seen, err := tx.Handled(ep.key, o.ID)
			if err != nil {
				return err
			}
			st, err := tx.State(ep.key)
			if err != nil {
				return err
			}
			if seen && in.reject == nil {
				// Whether another configuration is pending matters to a dialect that lets a server
				// go back to an earlier one (cmp7).
				cur, err := tx.Slot(ep.key, SlotCurrent)
				if err != nil {
					return err
				}
				next, err := tx.Slot(ep.key, SlotNext)
				if err != nil {
					return err
				}
				other := cur != nil && cur.ID != o.ID || next != nil && next.ID != o.ID
				seen = !a.dia.reapply(status, o, st, other)
			}
			if seen {
				logMsg, logArgs = "duplicate id confirmed again", []any{"status", status}
				return a.enqueueAnswer(tx, ep, o, result{Status: status, Code: codeOf(status)})
			}
		}
		if in.reject != nil {
			logMsg, logArgs = "configuration refused", []any{"reason", in.reject.Status}
			if o.ID != "" {
				if err := tx.SetHandled(ep.key, o.ID, in.reject.Status); err != nil {
					return err
				}
			}
			return a.enqueueAnswer(tx, ep, o, *in.reject)
		}
		cur, err := tx.Slot(ep.key, SlotCurrent)
		if err != nil {
			return err
		}
		next, err := tx.Slot(ep.key, SlotNext)
		if err != nil {
			return err
		}
		if o.ID != "" && (cur != nil && cur.ID == o.ID || next != nil && next.ID == o.ID) {
			logMsg = "redelivered configuration already pending"
			return nil
		}
		if next != nil && next.Seq == ep.inflight && cur == nil {
			// The waiting offer is being written right now: it finishes, the new one waits.
			if err := tx.SetSlot(ep.key, SlotCurrent, next); err != nil {
				return err
			}
		} else if next != nil {
			r := a.dia.superseded(o)
			if next.ID != "" {
				if err := tx.SetHandled(ep.key, next.ID, r.Status); err != nil {
					return err
				}
			}
			if err := a.enqueueAnswer(tx, ep, next, r); err != nil {
				return err
			}
			logMsg, logArgs = "configuration superseded", []any{"superseded", next.Text}
		}
		seq, err := tx.NextSeq()
		if err != nil {
			return err
		}
		o.Seq = seq
		return tx.SetSlot(ep.key, SlotNext, o)
	})
	if err != nil {
		return fmt.Errorf("store received configuration: %w", err)
	}
	if logMsg != "" {
		a.log.Warn(logMsg, append([]any{"endpoint", ep.key, "id", o.Text, "topic", topic}, logArgs...)...)
	}
	a.log.Debug("configuration received", "endpoint", ep.key, "id", o.Text, "topic", topic, "qos", qos, "bytes", len(payload))
	ep.poke()
	a.wakeOutbox()
	return nil
}

// codeOf recovers a result code for a stored status text (a duplicate is answered again with it).
func codeOf(status string) int {
	switch {
	case status == cmx.StatusOK:
		return 200
	case strings.HasPrefix(status, "superseded"):
		return 409
	case strings.HasPrefix(status, "invalid"):
		return 400
	case strings.HasPrefix(status, "validate"), strings.HasPrefix(status, "rejected"):
		return 422
	}
	return 500
}

func (a *Agent) enqueueAnswer(tx *Tx, ep *endpoint, o *Offer, r result) error {
	m, ok, err := a.dia.answer(tx, ep, o, r)
	if err != nil || !ok {
		return err
	}
	_, err = tx.Enqueue(m)
	return err
}

// worker applies an endpoint's offers one at a time, newest wins. A store failure is retried after
// a pause instead of spinning on the same offer.
func (a *Agent) worker(ctx context.Context, ep *endpoint) {
	const retry = 5 * time.Second
	var again <-chan time.Time
	for {
		drift := false
		select {
		case <-ctx.Done():
			return
		case <-ep.quit:
			return
		case <-ep.wake:
		case <-again:
		case <-ep.drift:
			drift = true
		}
		again = nil
		for ctx.Err() == nil && !ep.stopping() {
			o, err := a.pick(ep)
			if err == nil && o == nil {
				break
			}
			if err == nil {
				err = a.applyOffer(ctx, ep, o)
			}
			if err != nil {
				a.log.Error("cannot apply pending configuration; retrying", "endpoint", ep.key, "in", retry, "err", err)
				again = time.After(retry)
				break
			}
		}
		if drift && ctx.Err() == nil {
			a.checkDrift(ep) // after pending offers, so a crashed apply is redone rather than repaired
		}
	}
}

// pick returns the offer to apply next (the older slot first) and marks it in flight.
func (a *Agent) pick(ep *endpoint) (*Offer, error) {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	var o *Offer
	err := a.store.View(func(tx *Tx) error {
		var err error
		if o, err = tx.Slot(ep.key, SlotCurrent); err != nil || o != nil {
			return err
		}
		o, err = tx.Slot(ep.key, SlotNext)
		return err
	})
	if o != nil {
		ep.inflight = o.Seq
	}
	return o, err
}

func hashOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// applyOffer puts o's body in place and commits the result with its answer.
func (a *Agent) applyOffer(ctx context.Context, ep *endpoint, o *Offer) error {
	// However this returns, o is no longer being written: a newer offer must supersede it from now
	// on rather than queue behind it.
	defer func() {
		ep.mu.Lock()
		ep.inflight = 0
		ep.mu.Unlock()
	}()
	select {
	case a.applySem <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	defer func() { <-a.applySem }()

	var st EndpointState
	if err := a.store.View(func(tx *Tx) error {
		var err error
		st, err = tx.State(ep.key)
		return err
	}); err != nil {
		return fmt.Errorf("read endpoint state: %w", err)
	}
	out := a.pipeline(ctx, ep, o, st)
	if out.abandoned {
		// Stopping: the offer stays pending and is applied again from the start after the restart.
		ep.mu.Lock()
		ep.inflight = 0
		ep.mu.Unlock()
		a.log.Warn("stopping: configuration left pending", "endpoint", ep.key, "id", o.Text)
		return nil
	}
	r := out.r
	now := a.opt.Now()
	ep.mu.Lock()
	err := a.store.Batch(func(tx *Tx) error {
		st.LastText, st.LastStatus, st.LastAt = o.Text, r.Status, now
		if out.applied {
			st.AppliedID, st.AppliedText, st.AppliedHash, st.AppliedAt = o.ID, o.Text, out.hash, now
			if err := tx.SetBody(ep.key, out.body); err != nil {
				return err
			}
		}
		if err := tx.SetState(ep.key, st); err != nil {
			return err
		}
		if o.ID != "" {
			if err := tx.SetHandled(ep.key, o.ID, r.Status); err != nil {
				return err
			}
		}
		if err := a.enqueueAnswer(tx, ep, o, r); err != nil {
			return err
		}
		for _, s := range []Slot{SlotCurrent, SlotNext} {
			seq, ok, err := tx.SlotSeq(ep.key, s)
			if err != nil {
				return err
			}
			if ok && seq == o.Seq {
				return tx.SetSlot(ep.key, s, nil)
			}
		}
		return nil
	})
	ep.inflight = 0
	ep.mu.Unlock()
	if err != nil {
		// The offer stays pending: it is applied again, from the start, on the next try.
		return fmt.Errorf("record result of %s: %w", o.Text, err)
	}
	if r.ok() {
		a.log.Info("configuration applied", "endpoint", ep.key, "id", o.Text, "output", ep.cfg.Output, "bytes", len(o.Body))
	} else {
		a.log.Error("configuration not applied", "endpoint", ep.key, "id", o.Text, "status", r.Status)
	}
	a.opt.Pause(StepCommitted)
	a.wakeOutbox()
	a.changed()
	return nil
}
