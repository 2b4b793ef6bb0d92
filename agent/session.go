package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/cmx"
)

// session owns the MQTT client. It connects with its own backoff loop (paho's auto-reconnect has no
// jitter, and a fleet reconnecting after a broker failover must spread out), subscribes, asks for the
// latest configuration and drains the outbox.
//
// Each successful connection has a generation number and its own paho client. A publish counts as
// acknowledged only when its token completes without error while the generation it was sent on is
// still current. paho completes tokens of an earlier connection without error when it resumes a
// session, whether or not the broker ever had them; a fresh client per connection avoids that replay,
// and the generation check refuses any completion that comes after its connection ended.
type session struct {
	a *Agent

	mu        sync.Mutex
	client    mqtt.Client   // the live connection's client; nil while disconnected
	gen       uint64        // current connection generation; 0 while disconnected
	genDone   chan struct{} // closed when the current generation ends
	server    string        // broker of the current connection
	lastErr   string        // cause of the last failed connection attempt, logged once per change
	lastErrAt time.Time     // when lastErr first happened
	vagueSeen bool          // a reset without a cause was seen since the last connection

	genWake  chan struct{} // the generation changed
	sentDone chan sentResult
	nextGen  uint64

	attempted atomic.Value // string: the broker of the latest connection attempt
}

type sentResult struct {
	gen   uint64
	seq   uint64
	acked bool
}

func newSession(a *Agent) *session {
	s := &session{
		a:        a,
		genWake:  make(chan struct{}, 1),
		sentDone: make(chan sentResult, 64),
	}
	s.attempted.Store("")
	return s
}

// Connected reports whether the agent has a live broker connection, and which broker.
func (s *session) connected() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen != 0, s.server
}

func (s *session) current() (uint64, chan struct{}, mqtt.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen, s.genDone, s.client
}

func (s *session) up(server string, client mqtt.Client) uint64 {
	s.mu.Lock()
	s.client = client
	s.nextGen++
	s.gen = s.nextGen
	s.genDone = make(chan struct{})
	s.server = server
	s.lastErr, s.vagueSeen = "", false
	gen := s.gen
	s.mu.Unlock()
	s.poke()
	s.a.changed()
	return gen
}

func (s *session) down(gen uint64) {
	s.mu.Lock()
	if s.gen == gen && gen != 0 {
		s.gen = 0
		s.client = nil
		close(s.genDone)
		s.genDone = nil
	}
	s.mu.Unlock()
	s.poke()
	s.a.changed()
}

func (s *session) poke() {
	select {
	case s.genWake <- struct{}{}:
	default:
	}
}

func (s *session) run(ctx context.Context) error {
	// A missing certificate or a password file with a bad mode is not fatal: it is logged, retried
	// with backoff and shown in status, so fixing the file on disk is enough and a gateway never
	// restart-loops over it.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.sendLoop(ctx)
	}()

	bo := backoff{min: time.Second, max: 60 * time.Second}
	for ctx.Err() == nil {
		// A fresh client for every connection: paho keeps the tokens and stored packets of a lost
		// connection and replays them on the next (completing the old tokens without error, and
		// racing with new publishes). The agent's outbox already resends what was not acknowledged,
		// and the broker redelivers unacknowledged pushes to the persistent session.
		client, lost, in, err := s.newClient(ctx)
		if err != nil {
			s.noteConnectError(err)
			sleepCtx(ctx, bo.next())
			continue
		}
		tok := client.Connect()
		if !waitToken(ctx, tok) {
			in.close()
			break
		}
		if err := tok.Error(); err != nil {
			in.close()
			s.noteConnectError(err)
			sleepCtx(ctx, bo.next())
			continue
		}
		server := s.attempted.Load().(string)
		gen := s.up(server, client)
		s.a.log.Info("connected to broker", "server", server, "client_id", s.a.cfg.Broker.ClientID)
		if err := s.subscribeAndRequest(ctx, gen, client, s.a.endpointList()); err != nil {
			s.down(gen)
			in.close()
			client.Disconnect(0)
			if ctx.Err() != nil {
				break
			}
			s.a.log.Error("cannot subscribe; reconnecting", "err", err)
			sleepCtx(ctx, bo.next())
			continue
		}
		bo.reset()
		select {
		case <-ctx.Done():
			s.down(gen)
			in.close()
			client.Disconnect(250)
		case err := <-lost:
			s.down(gen)
			client.Disconnect(0) // the agent may end a live connection itself (see newClient)
			in.close()
			s.a.log.Warn("connection to broker lost", "server", server, "err", err)
			sleepCtx(ctx, bo.next())
		}
	}
	wg.Wait()
	return nil
}

// newClient builds a paho client for one connection; lost receives the reason it ended, and in
// passes its messages to onMessage in the order they arrived until it is closed.
func (s *session) newClient(ctx context.Context) (mqtt.Client, <-chan error, *inbox, error) {
	opts, err := s.a.clientOptions()
	if err != nil {
		return nil, nil, nil, err
	}
	lost := make(chan error, 1)
	in := newInbox(func(m mqtt.Message) string {
		t, _ := cmx.SplitTopic(m.Topic(), s.a.cfg.Kaa.AppVersion, s.a.cfg.Kaa.Extension)
		return t.Token // a push's order matters among its endpoint's messages only
	})
	go in.run(ctx, func(m mqtt.Message) {
		if !s.onMessage(ctx, m) {
			// A message that cannot be stored stays unacknowledged, and so must every later one:
			// acknowledging them would let the broker redeliver it after them, out of order. End
			// this connection; after the reconnect the broker sends them all again, in order.
			in.close()
			select {
			case lost <- errors.New("a received configuration could not be stored; reconnecting so the broker sends it again"):
			default:
			}
		}
	})
	opts.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
		if !in.add(m) {
			s.a.log.Warn("overloaded; QoS 0 message dropped", "topic", m.Topic())
		}
	})
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		select {
		case lost <- err:
		default:
		}
	})
	opts.SetConnectionAttemptHandler(func(u *url.URL, cfg *tls.Config) *tls.Config {
		s.attempted.Store(u.Redacted())
		return cfg
	})
	return mqtt.NewClient(opts), lost, in, nil
}

// noteConnectError records a failed connection attempt. The cause, in plain words, is logged once per
// change (a broker refusing every few seconds must not flood the journal) and kept for status.
func (s *session) noteConnectError(err error) {
	cause := connectCause(err)
	s.mu.Lock()
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
			s.a.log.Debug("cannot connect to broker", "cause", cause)
			return
		}
	}
	changed := s.lastErr != cause
	s.lastErr = cause
	if changed {
		s.lastErrAt = s.a.opt.Now()
	}
	s.mu.Unlock()
	if changed {
		s.a.log.Warn("cannot connect to broker; retrying with backoff", "servers", redactServers(s.a.cfg.Broker.Servers), "cause", cause, "err", err)
	} else {
		s.a.log.Debug("cannot connect to broker", "cause", cause)
	}
}

// subscribeAndRequest subscribes eps' topics, waits for the SUBACK, then asks for the latest
// configuration of each, so that the answer cannot arrive before the subscription.
func (s *session) subscribeAndRequest(ctx context.Context, gen uint64, client mqtt.Client, eps []*endpoint) error {
	filters := map[string]byte{}
	for _, ep := range eps {
		for _, f := range s.a.dia.filters(ep) {
			filters[f] = 1
		}
	}
	tok := client.SubscribeMultiple(filters, nil)
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !waitToken(tctx, tok) {
		return fmt.Errorf("subscribe: no SUBACK within 30s")
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code == 0x80 {
				return fmt.Errorf("subscribe %s: refused by the broker (not authorised?)", f)
			}
		}
	}
	s.request(client, eps)
	go s.repeatRequests(ctx, gen, eps)
	return nil
}

// request asks for the latest configuration of eps with fresh message ids.
func (s *session) request(client mqtt.Client, eps []*endpoint) {
	if len(eps) == 0 {
		return
	}
	var first uint64
	states := make([]EndpointState, len(eps))
	err := s.a.store.Update(func(tx *Tx) error {
		var err error
		if first, err = tx.NextIDs(len(eps)); err != nil {
			return err
		}
		for i, ep := range eps {
			if states[i], err = tx.State(ep.key); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.a.log.Error("cannot request configuration", "err", err)
		return
	}
	for i, ep := range eps {
		ep.answered.Store(false)
		topic, payload := s.a.dia.request(ep, first+uint64(i), states[i])
		client.Publish(topic, 1, false, payload)
		s.a.log.Debug("requested latest configuration", "endpoint", ep.key, "topic", topic, "msg_id", first+uint64(i))
	}
}

// repeatRequests asks again, with a growing interval, for endpoints whose request got no answer: a
// lost answer must not park an endpoint until the next reconnect.
func (s *session) repeatRequests(ctx context.Context, gen uint64, eps []*endpoint) {
	wait := s.a.opt.PullTimeout
	for {
		_, done, client := s.current()
		if done == nil {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-done:
			t.Stop()
			return
		case <-t.C:
		}
		if g, _, _ := s.current(); g != gen {
			return
		}
		var again []*endpoint
		for _, ep := range eps {
			if !ep.answered.Load() {
				again = append(again, ep)
			}
		}
		if len(again) == 0 {
			return
		}
		s.a.log.Info("no answer to configuration request; asking again", "endpoints", len(again), "waited", wait)
		s.request(client, again)
		wait = min(2*wait, 10*time.Minute)
	}
}

// onMessage stores a configuration message and acknowledges it. It returns false when the message
// could not be stored and was left unacknowledged.
func (s *session) onMessage(ctx context.Context, m mqtt.Message) bool {
	a := s.a
	// Messages come from the connection's inbox, in order per endpoint token and concurrently
	// across tokens; the semaphore bounds how many wait on the store at once.
	if m.Qos() == 0 {
		select {
		case a.recvSem <- struct{}{}:
		default:
			a.log.Warn("overloaded; QoS 0 message dropped", "topic", m.Topic())
			return true
		}
	} else {
		select {
		case a.recvSem <- struct{}{}:
		case <-ctx.Done():
			return true // stopping: left unacknowledged, redelivered after the restart
		}
	}
	defer func() { <-a.recvSem }()

	t, ok := cmx.SplitTopic(m.Topic(), a.cfg.Kaa.AppVersion, a.cfg.Kaa.Extension)
	if ok {
		for _, ep := range a.endpointByToken(t.Token) {
			if !a.dia.isConfig(ep, t.Rest) {
				continue
			}
			ep.answered.Store(true)
			if err := a.receive(ep, m.Topic(), m.Qos(), m.Payload()); err != nil {
				// Not acknowledged: the broker delivers it again after the next connect.
				a.log.Error("cannot store configuration; it stays unacknowledged", "endpoint", ep.key, "topic", m.Topic(), "err", err)
				return false
			}
			a.opt.Pause(StepReceived)
			break
		}
	}
	m.Ack()
	return true
}

// sendLoop publishes the outbox while connected. Each message is published once per connection
// generation and deleted only when the broker acknowledged it on that same generation.
func (s *session) sendLoop(ctx context.Context) {
	const maxInflight = 256
	var (
		curGen   uint64
		inflight = map[uint64]bool{}
	)
	for {
		gen, done, client := s.current()
		if gen != curGen {
			curGen = gen
			clear(inflight)
		}
		if gen != 0 && len(inflight) < maxInflight {
			var msgs []OutMsg
			err := s.a.store.View(func(tx *Tx) error {
				var err error
				msgs, err = tx.Outbox(maxInflight + len(inflight))
				return err
			})
			if err != nil {
				s.a.log.Error("cannot read outbox", "err", err)
			}
			for _, m := range msgs {
				if inflight[m.Seq] || len(inflight) >= maxInflight {
					continue
				}
				inflight[m.Seq] = true
				tok := client.Publish(m.Topic, m.QoS, false, m.Payload)
				go s.await(ctx, gen, done, m, tok)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-s.a.outWake:
		case <-s.genWake:
		case r := <-s.sentDone:
			if r.gen == curGen && r.acked {
				delete(inflight, r.seq)
			}
		}
	}
}

func (s *session) await(ctx context.Context, gen uint64, done chan struct{}, m OutMsg, tok mqtt.Token) {
	report := func(acked bool) {
		select {
		case s.sentDone <- sentResult{gen: gen, seq: m.Seq, acked: acked}:
		case <-ctx.Done():
		}
	}
	select {
	case <-tok.Done():
	case <-done:
		return
	case <-ctx.Done():
		return
	}
	if err := tok.Error(); err != nil {
		s.a.log.Warn("publish failed; will resend after reconnect", "topic", m.Topic, "err", err)
		return
	}
	if g, _, _ := s.current(); g != gen {
		return // completed after its connection ended: not proof of delivery
	}
	s.a.opt.Pause(StepPublished)
	if err := s.a.store.Batch(func(tx *Tx) error { return tx.DeleteOutbox(m.Seq) }); err != nil {
		s.a.log.Error("cannot delete sent message from outbox", "err", err)
		return
	}
	s.a.log.Debug("answer delivered", "endpoint", m.Endpoint, "topic", m.Topic, "qos", m.QoS)
	report(true)
}

func waitToken(ctx context.Context, tok mqtt.Token) bool {
	select {
	case <-tok.Done():
		return true
	case <-ctx.Done():
		return false
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// backoff is exponential with jitter: each delay is drawn from [d/2, d] where d doubles from min to
// max.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

func (b *backoff) reset() { b.cur = 0 }
