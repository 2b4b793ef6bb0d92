// Package transport connects cmx-agent's engine to an MQTT broker with paho: it owns the client,
// the connection generations, the ordered inbox, acknowledgements and sending. The engine never
// sees paho; it gets messages through Core.Deliver and says through each Receipt when a message may
// be acknowledged.
package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/backoff"
	"github.com/cmx-agent/cmx-agent/internal/clock"
)

// Core is what the session serves: the engine.
type Core interface {
	Filters() []string
	Deliver(engine.Message) *engine.Receipt
	Online(gen uint64, persistent bool)
	Offline(gen uint64)
	Outbox() *engine.Outbox
}

// Options configure a Session.
type Options struct {
	Logger *slog.Logger
	// ClientID is the MQTT client id (the configuration's, or the one the engine keeps).
	ClientID string
	// MaxPayload bounds what is read of one message: a larger payload is cut to its beginning while
	// it is read from the socket, never held whole (default 1 MiB).
	MaxPayload int
	// Pause is called with engine.StepPublished; see engine.Options.Pause.
	Pause func(step string)
	// Clock is the wall clock, for the time of a connection error shown to people, and the source
	// of the session's waits: the backoff before a connection attempt, the QoS 1 probe of a QoS 0
	// connection (an AfterFunc, the one the session arms), the pause before a failed publish is sent
	// again. Deadlines of network reads and of paho's tokens stay on the system clock, which the
	// kernel and paho measure them by. Default clock.Real.
	Clock clock.Clock
	// OnChange is called when the connection comes up or goes down.
	OnChange func()
	// Rand draws the reconnect delays (a test seeds it); nil uses math/rand/v2's global source.
	// Only Run uses it, from one goroutine.
	Rand *rand.Rand
}

// Session owns the MQTT client. It connects with its own backoff loop (paho's auto-reconnect has no
// jitter, and a fleet reconnecting after a broker failover must spread out), subscribes, tells the
// engine it is online, acknowledges what the engine lets it, and sends the outbox.
//
// Each successful connection has a generation number and its own paho client. A publish counts as
// acknowledged only when its token completes without error while the generation it was sent on is
// still current. paho completes tokens of an earlier connection without error when it resumes a
// session, whether or not the broker ever had them; a fresh client per connection avoids that replay,
// and the generation check refuses any completion that comes after its connection ended.
type Session struct {
	cfg      config.Broker
	clientID string
	core     Core
	log      *slog.Logger
	opt      Options

	mu        sync.Mutex
	client    mqtt.Client // the live connection's client; nil while disconnected
	gen       uint64      // current connection generation; 0 while disconnected
	online    bool        // gen is subscribed and the engine told: what status calls connected
	server    string      // broker of the current connection
	lastErr   string      // cause of the last failed connection attempt, logged once per change
	lastErrAt time.Time   // when lastErr first happened
	vagueSeen bool        // a reset without a cause was seen since the last connection
	nextGen   uint64
	qos       byte      // QoS the live connection subscribes at: asked for, then as granted
	probeAt   time.Time // at QoS 0: when the session tries QoS 1 again (see ladder); else zero
	refused   []string  // filters the broker refused on the live connection while granting others

	attempted atomic.Value // string: the broker of the latest connection attempt

	// added, when a test sets it before Run, is called with each message paho hands over, after
	// the inbox took it or refused it: the point a test waits for before letting the engine go on.
	added    func(mqtt.Message)
	failures map[string]uint64 // failed connection attempts by cause (FailureCauses); guarded by mu
}

// New returns a session for cfg serving core; Run connects it.
func New(cfg config.Broker, core Core, opt Options) *Session {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Pause == nil {
		opt.Pause = func(string) {}
	}
	opt.Clock = clock.OrReal(opt.Clock)
	if opt.MaxPayload <= 0 {
		opt.MaxPayload = 1 << 20
	}
	s := &Session{cfg: cfg, clientID: opt.ClientID, core: core, log: opt.Logger, opt: opt}
	s.attempted.Store("")
	return s
}

// State reports the broker connection; safe to call at any time from any goroutine.
func (s *Session) State() ConnState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := ConnState{Connected: s.online, Server: s.server, LastError: s.lastErr, LastErrorAt: s.lastErrAt, Connects: s.nextGen,
		ConnectFailures: maps.Clone(s.failures)}
	if !st.Connected {
		st.Server, _ = s.attempted.Load().(string)
	} else {
		st.QoS, st.QoS1RetryAt, st.RefusedFilters = s.qos, s.probeAt, slices.Clone(s.refused)
	}
	return st
}

func (s *Session) changed() {
	if s.opt.OnChange != nil {
		s.opt.OnChange()
	}
}

// current is the live connection: its generation, client and the QoS it subscribes at.
func (s *Session) current() (uint64, mqtt.Client, byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen, s.client, s.qos
}

func (s *Session) up(server string, client mqtt.Client, qos byte) uint64 {
	s.mu.Lock()
	s.client = client
	s.qos = qos
	s.nextGen++
	s.gen = s.nextGen
	s.server = server
	s.vagueSeen = false
	gen := s.gen
	s.mu.Unlock()
	return gen
}

func (s *Session) down(gen uint64) {
	s.mu.Lock()
	was := s.gen == gen && gen != 0
	if was {
		s.gen = 0
		s.client = nil
		s.online = false
		s.probeAt, s.refused = time.Time{}, nil
	}
	s.mu.Unlock()
	if was {
		s.core.Offline(gen)
		s.changed()
	}
}

// Run connects and serves until ctx ends.
func (s *Session) Run(ctx context.Context) error {
	// A missing certificate or a password file with a bad mode is not fatal: it is logged, retried
	// with backoff and shown in status, so fixing the file on disk is enough and a gateway never
	// restart-loops over it.
	r := &runner{s: s, pol: NewReconnectPolicy(s.cfg.ReconnectSpread.Duration), lad: ladder{persistent: !s.cfg.CleanSession}}
	for ctx.Err() == nil {
		if !r.attempt(ctx) {
			break
		}
	}
	return nil
}

// runner is the state Run keeps across connections.
type runner struct {
	s       *Session
	pol     ReconnectPolicy
	lad     ladder
	refused int // attempts refused in a row since start, the last lost connection or rung
}

// backoff waits the policy's delay for one more attempt refused in a row.
func (r *runner) backoff(ctx context.Context) {
	r.refused++
	clock.Sleep(ctx, r.s.opt.Clock, r.pol.Delay(r.refused, r.s.opt.Rand))
}

// attempt is one connection's life: connect, subscribe, serve until it ends. It reports false
// when ctx ended while it waited for the broker.
func (r *runner) attempt(ctx context.Context) bool {
	s := r.s
	c, clean, qos, ok := r.connect(ctx)
	if c == nil {
		return ok
	}
	server := s.attempted.Load().(string)
	c.gen = s.up(server, c.client, qos)
	s.log.Info("connected to broker", "server", server, "client_id", s.clientID, "clean_session", clean, "qos", qos)
	c.start(ctx)
	res, err := subscribe(ctx, c.client, s.core.Filters(), qos)
	if err != nil {
		return r.subscribeFailed(ctx, c, server, err)
	}
	probe, stopProbe := r.online(c, server, clean, qos, res)
	defer stopProbe()
	r.refused = 0
	r.serve(ctx, c, server, probe)
	return true
}

// connect makes the connection the ladder plans next, discarding the previous session first if
// it says so. On a failure it notes it and backs off, and returns a nil conn; ok is false when
// ctx ended while it waited for the broker.
func (r *runner) connect(ctx context.Context) (c *conn, clean bool, qos byte, ok bool) {
	s := r.s
	discard, clean, qos := r.lad.plan(s.opt.Clock.Now())
	if discard {
		if err := s.discardSession(ctx); err != nil {
			if ctx.Err() != nil {
				return nil, false, 0, false
			}
			r.connectFailed(ctx, err)
			return nil, false, 0, true
		}
	}
	c, err := s.newConn(ctx, clean)
	if err != nil {
		r.lad.interrupted()
		r.connectFailed(ctx, err)
		return nil, false, 0, true
	}
	tok := c.client.Connect()
	if !waitToken(ctx, tok) {
		c.close()
		return nil, false, 0, false
	}
	if err := tok.Error(); err != nil {
		c.close()
		r.lad.interrupted()
		r.connectFailed(ctx, err)
		return nil, false, 0, true
	}
	return c, clean, qos, true
}

// connectFailed notes a failed connection attempt in status and backs off.
func (r *runner) connectFailed(ctx context.Context, err error) {
	r.s.noteConnectError(err)
	r.backoff(ctx)
}

// subscribeFailed ends c, whose SUBSCRIBE failed, and decides what comes next: a refusal moves
// the ladder (a rung down, or the session discarded), anything else is an interruption; then
// it backs off. It reports false when ctx ended.
func (r *runner) subscribeFailed(ctx context.Context, c *conn, server string, err error) bool {
	s := r.s
	s.down(c.gen)
	c.close()
	c.client.Disconnect(0)
	if ctx.Err() != nil {
		return false
	}
	s.noteSubscribeError(err)
	var ref *RefusedError
	if errors.As(err, &ref) {
		v := r.lad.refused(ref.Closed, s.opt.Clock.Now(), s.opt.Rand)
		if v.moved {
			s.log.Error(v.line, "server", server, "err", err)
		} else {
			s.log.Warn(v.line, "server", server, "err", err)
		}
		if v.restart {
			r.refused = 0
		}
	} else {
		r.lad.interrupted()
		s.log.Error("cannot subscribe; reconnecting", "err", err)
	}
	r.backoff(ctx)
	return true
}

// online takes c online once subscribed: it says what the broker granted short of what was
// asked, tells the engine and status, and lets c publish at the QoS the broker takes. It returns
// a channel closed when it is time to try QoS 1 again, on the ladder's QoS 0 rung (nil otherwise),
// and the function that disarms it.
func (r *runner) online(c *conn, server string, clean bool, qos byte, res subResult) (probe <-chan struct{}, stop func()) {
	s := r.s
	if line := r.lad.subscribed(); line != "" {
		s.log.Info(line, "server", server)
	}
	var probeAt time.Time
	switch {
	case r.lad.step == rungQoS0:
		probeAt = r.lad.probeAt
		d := max(probeAt.Sub(s.opt.Clock.Now()), 0)
		due := make(chan struct{})
		t := s.opt.Clock.AfterFunc(d, func() { close(due) })
		probe, stop = due, func() { t.Stop() }
		s.log.Warn("subscribed at QoS 0: the broker refuses this client id a QoS 1 subscription", "server", server, "qos1_again_in", d.Round(time.Second))
	case res.granted < qos:
		s.log.Warn("the broker granted the subscription at QoS 0 only: pushes made while disconnected are not kept, and answers go at QoS 0", "server", server)
	}
	if len(res.refused) > 0 {
		s.log.Error("the broker refused the subscription to some topics (its ACL?); their endpoints receive nothing, the others work", "server", server, "filters", res.refused)
	}
	s.core.Online(c.gen, !clean && res.granted == 1)
	s.mu.Lock()
	s.online = s.gen == c.gen
	s.qos, s.probeAt, s.refused = res.granted, probeAt, res.refused
	s.lastErr = ""
	s.mu.Unlock()
	s.changed()
	// Publishing starts once status says connected, so nothing the broker sees from this
	// connection comes before it.
	pubMax := byte(1) // asked for QoS 0 (the ladder's rung), the broker told nothing
	if res.granted < qos {
		pubMax = res.granted
	}
	c.subscribed(pubMax)
	if stop == nil {
		stop = func() {}
	}
	return probe, stop
}

// serve waits until c's life ends: ctx ends, the QoS 1 probe is due (c ends so that the next
// connection asks for QoS 1), or the connection is lost (the next attempt waits a random part of
// the spread).
func (r *runner) serve(ctx context.Context, c *conn, server string, probe <-chan struct{}) {
	s := r.s
	select {
	case <-ctx.Done():
		s.down(c.gen)
		c.close()
		c.client.Disconnect(250)
	case <-probe:
		s.log.Info("trying the QoS 1 subscription again", "server", server)
		r.lad.probeNow()
		s.down(c.gen)
		c.close()
		c.client.Disconnect(250)
	case err := <-c.lost:
		s.down(c.gen)
		c.client.Disconnect(0) // the agent may end a live connection itself
		c.close()
		c.settle()
		// A fleet loses its broker at once: the first attempt waits a random part of the
		// spread, so the fleet comes back over it instead of all at once.
		d := r.pol.Delay(0, s.opt.Rand)
		s.log.Warn("connection to broker lost", "server", server, "err", err, "reconnect_in", d.Round(time.Millisecond))
		clock.Sleep(ctx, s.opt.Clock, d)
	}
}

// discardSession connects once with a clean session and leaves: MQTT 3.1.1 has the broker discard
// the client id's previous session on such a CONNECT, so the next connection starts a new one.
func (s *Session) discardSession(ctx context.Context) error {
	c, err := s.newConn(ctx, true)
	if err != nil {
		return err
	}
	defer c.close()
	tok := c.client.Connect()
	if !waitToken(ctx, tok) {
		c.client.Disconnect(0)
		return ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return err
	}
	c.client.Disconnect(250)
	return nil
}

// Apply carries out a reload's changes on the live connection: subscribe the new filters, then
// unsubscribe the old ones (so nothing falls between), then have the engine request. When not
// connected it does nothing: the next connection subscribes everything and requests for all.
func (s *Session) Apply(ctx context.Context, ch engine.Changes, request func([]string)) error {
	_, client, qos := s.current()
	if client == nil {
		return nil
	}
	res, err := subscribe(ctx, client, ch.Subscribe, qos)
	var ref *RefusedError
	if errors.As(err, &ref) && !ref.Closed {
		res.refused = ref.Filters
	} else if err != nil {
		return err
	}
	if len(res.refused) > 0 {
		s.mu.Lock()
		if s.client == client {
			s.refused = append(s.refused, res.refused...)
			slices.Sort(s.refused)
		}
		s.mu.Unlock()
		s.changed()
		err = fmt.Errorf("the broker refused the subscription to %s (its ACL?); those endpoints receive nothing", strings.Join(res.refused, ", "))
	}
	if len(ch.Unsubscribe) > 0 {
		tok := client.Unsubscribe(ch.Unsubscribe...)
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if !waitToken(tctx, tok) {
			return fmt.Errorf("unsubscribe %v: no UNSUBACK within 30s", ch.Unsubscribe)
		}
		if err := tok.Error(); err != nil {
			return fmt.Errorf("unsubscribe: %w", err)
		}
		s.mu.Lock()
		if s.client == client {
			s.refused = slices.DeleteFunc(s.refused, func(f string) bool { return slices.Contains(ch.Unsubscribe, f) })
		}
		s.mu.Unlock()
		s.changed()
	}
	request(ch.Request)
	return err
}

// noteSubscribeError keeps a failed SUBSCRIBE's cause for status, as noteConnectError does for a
// failed CONNECT (the ladder logs its own lines): a broker refusing every subscription leaves the
// agent unconnected, and status says why.
func (s *Session) noteSubscribeError(err error) {
	cause := err.Error()
	var ref *RefusedError
	if errors.As(err, &ref) {
		if ref.Closed {
			cause = "the broker closes the connection in answer to the SUBSCRIBE (the session's queue unavailable?)"
		} else {
			cause = "the broker refused the subscription to " + strings.Join(ref.Filters, ", ") + " (not authorised?)"
		}
	}
	s.mu.Lock()
	changed := s.setLastErr(cause)
	s.mu.Unlock()
	if changed {
		s.changed()
	}
}

// setLastErr keeps cause for status, with the time it was first seen; s.mu is held. It reports
// whether the cause changed.
func (s *Session) setLastErr(cause string) bool {
	if s.lastErr == cause {
		return false
	}
	s.lastErr, s.lastErrAt = cause, s.opt.Clock.Now()
	return true
}

// noteConnectError records a failed connection attempt. The cause, in plain words, is logged once per
// change (a broker refusing every few seconds must not flood the journal) and kept for status.
func (s *Session) noteConnectError(err error) {
	cause := connectCause(err)
	s.mu.Lock()
	if s.failures == nil {
		s.failures = make(map[string]uint64, len(FailureCauses()))
	}
	s.failures[failureCause(err)]++
	if vagueCause(err) {
		switch {
		case s.lastErr != "":
			// Most likely the same refusal as before, seen through a reset: keep the clear cause.
			cause = s.lastErr
		case !s.vagueSeen:
			// A bare reset names no cause; the next attempt usually does. Wait for it before
			// calling the reset the cause.
			s.vagueSeen = true
			s.mu.Unlock()
			s.log.Debug("cannot connect to broker", "cause", cause)
			return
		}
	}
	changed := s.setLastErr(cause)
	s.mu.Unlock()
	if changed {
		s.log.Warn("cannot connect to broker; retrying with backoff", "servers", redactServers(s.cfg.Servers), "cause", cause, "err", err)
		s.changed()
	} else {
		s.log.Debug("cannot connect to broker", "cause", cause)
	}
}

func waitToken(ctx context.Context, tok mqtt.Token) bool {
	select {
	case <-tok.Done():
		return true
	case <-ctx.Done():
		return false
	}
}

// The backoff of refused connection attempts.
const (
	ReconnectMin = time.Second
	ReconnectMax = 60 * time.Second
)

// ReconnectPolicy is how long the session waits before a connection attempt. It is pure (the
// randomness is the caller's), so that a fleet simulation runs the agent's own delays.
type ReconnectPolicy struct {
	// Spread is the window of the first attempt after a lost connection: its delay is uniform in
	// [0, Spread) ("full jitter"). A fleet that loses its broker at once then comes back over the
	// whole window, not within a second. 0: that attempt waits like the first refused one.
	Spread time.Duration
	// Min and Max bound the backoff after a refused attempt: the n-th refusal in a row waits a delay
	// drawn from [d/2, d], where d is Min doubled n-1 times, at most Max.
	Min, Max time.Duration
}

// NewReconnectPolicy is the session's policy for a spread (broker.reconnect_spread).
func NewReconnectPolicy(spread time.Duration) ReconnectPolicy {
	return ReconnectPolicy{Spread: spread, Min: ReconnectMin, Max: ReconnectMax}
}

// Delay returns the wait before the next connection attempt: attempt 0 is the first one after a
// lost connection, attempt n ≥ 1 the one after n refused attempts in a row. r draws the jitter;
// nil uses math/rand/v2's global source.
func (p ReconnectPolicy) Delay(attempt int, r *rand.Rand) time.Duration {
	if attempt <= 0 {
		if p.Spread > 0 {
			return time.Duration(backoff.Int64N(r, int64(p.Spread)))
		}
		attempt = 1
	}
	return backoff.Policy{Min: p.Min, Max: p.Max}.Nth(attempt, r)
}

// attemptHandler records which broker a connection attempt goes to.
func (s *Session) attemptHandler(u *url.URL, cfg *tls.Config) *tls.Config {
	s.attempted.Store(u.Redacted())
	return cfg
}
