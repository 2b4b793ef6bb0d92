package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/clock"
)

// conn is one connection: its paho client, the inbox that hands messages to the engine in arrival
// order, the queue of acknowledgements that go out in that same order, and the sender of the
// outbox.
//
// paho's ordered mode runs the message handler on its router goroutine, and a handler that blocks
// there deadlocks paho; so the handler only appends to the inbox. One goroutine delivers to the
// engine (which never blocks) and queues each receipt; another acknowledges the head of that queue
// once its receipt is released. MQTT 3.1.1 §4.6 wants PUBACKs in the order the PUBLISHes came,
// whatever endpoint each was for; an engine error on a receipt ends the connection, so nothing after
// an unstored message is acknowledged and the broker sends them all again, in order.
type conn struct {
	s      *Session
	client mqtt.Client
	gen    uint64
	lost   chan error
	nonce  [16]byte // marks a payload cut by limitConn; unknown to the network

	mu     sync.Mutex
	msgs   []mqtt.Message
	bytes  int // what msgs holds, as inboxCost counts it
	wake   chan struct{}
	closed bool
	// dropped is set when a QoS 1 message did not fit in the inbox: from then on nothing is
	// queued, so nothing later is applied or acknowledged before the broker sends it again.
	dropped bool
	stop    chan struct{}
	wg      sync.WaitGroup

	// ready is closed once the SUBACK has told the QoS the broker takes; nothing is published
	// before. A broker that grants QoS 0 to a QoS 1 SUBSCRIBE may drop a client that publishes
	// at QoS 1 (mosquitto's max_qos does, MQTT 3.1.1 has no other way to say so), so pubMax caps
	// what this connection publishes at.
	ready  chan struct{}
	pubMax byte

	// byBroker is set when paho lost the connection (the broker closed it, or the network), as
	// opposed to the agent ending it; flying is what send left waiting for a PUBACK then.
	byBroker atomic.Bool
	flying   []engine.OutMsg
}

// maxInboxBytes bounds the bytes waiting in the inbox (inboxCost), beyond the engine's own queues:
// a broker that sends faster than the engine takes must not fill memory. Past it QoS 0 messages
// are dropped (QoS 0 allows it) and a QoS 1 message ends the connection, to be sent again later
// with everything after it.
func (s *Session) maxInboxBytes() int { return 4*s.opt.MaxPayload + 1<<20 }

// msgOverhead is about what paho's record of one message takes besides its topic and payload.
const msgOverhead = 128

// inboxCost is what m takes in the inbox: its payload, and its topic and record too, so that a
// flood of messages with empty payloads is bounded as well.
func inboxCost(m mqtt.Message) int { return len(m.Payload()) + len(m.Topic()) + msgOverhead }

func (s *Session) newConn(ctx context.Context, clean bool) (*conn, error) {
	opts, err := s.clientOptions(clean)
	if err != nil {
		return nil, err
	}
	c := &conn{s: s, lost: make(chan error, 1), wake: make(chan struct{}, 1), stop: make(chan struct{}), ready: make(chan struct{})}
	randRead(c.nonce[:])
	opts.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
		c.add(m)
		if s.added != nil {
			s.added(m)
		}
	})
	opts.SetConnectionLostHandler(func(_ mqtt.Client, err error) {
		c.byBroker.Store(true)
		c.end(err)
	})
	opts.SetConnectionAttemptHandler(s.attemptHandler)
	opts.SetCustomOpenConnectionFn(s.openFn(c))
	c.client = mqtt.NewClient(opts)
	return c, nil
}

func (c *conn) end(err error) {
	select {
	case c.lost <- err:
	default:
	}
}

// add queues m; it never blocks.
func (c *conn) add(m mqtt.Message) {
	c.mu.Lock()
	if c.closed || c.dropped {
		c.mu.Unlock()
		return
	}
	cost := inboxCost(m)
	if c.bytes+cost > c.s.maxInboxBytes() {
		if m.Qos() == 0 {
			c.mu.Unlock()
			c.s.log.Warn("overloaded; QoS 0 message dropped", "topic", m.Topic())
			return
		}
		// The broker sends this one again only on the next connection, and after it everything
		// it has not had a PUBACK for. A later message taken now would be applied first and then
		// overtaken by this older one, and acknowledging it would keep the broker from sending it
		// again after this one: so nothing more is taken on this connection.
		c.dropped = true
		queued := c.bytes
		c.mu.Unlock()
		c.s.log.Warn("overloaded; a QoS 1 message could not be queued: nothing more is taken on this connection, and the broker sends it and the later ones again after reconnecting", "topic", m.Topic(), "queued_bytes", queued)
		c.end(errors.New("overloaded: more received than the agent can queue; reconnecting so the broker sends it again"))
		return
	}
	c.msgs = append(c.msgs, m)
	c.bytes += cost
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// subscribed lets the sender start, publishing at pubMax at most; called once.
func (c *conn) subscribed(pubMax byte) {
	c.pubMax = pubMax
	close(c.ready)
}

// start runs the delivering, acknowledging and sending goroutines until close.
func (c *conn) start(ctx context.Context) {
	acks := make(chan ack, 4096)
	c.wg.Add(3)
	go func() { defer c.wg.Done(); c.deliver(ctx, acks) }()
	go func() { defer c.wg.Done(); c.acknowledge(ctx, acks) }()
	go func() { defer c.wg.Done(); c.send(ctx) }()
}

// close stops the goroutines; messages still queued were not acknowledged, and the broker sends
// them again on the next connection.
func (c *conn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.msgs = nil
	c.mu.Unlock()
	close(c.stop)
	c.wg.Wait()
}

type ack struct {
	m mqtt.Message
	r receipt
}

// receipt is what acknowledging needs of an engine.Receipt.
type receipt interface {
	Done() <-chan struct{}
	Err() error
}

func (c *conn) deliver(ctx context.Context, acks chan<- ack) {
	for {
		c.mu.Lock()
		batch := c.msgs
		c.msgs, c.bytes = nil, 0
		c.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-c.stop:
				return
			case <-c.wake:
			}
			continue
		}
		for _, m := range batch {
			msg := engine.Message{Topic: m.Topic(), QoS: m.Qos(), Payload: m.Payload(), Conn: c.gen}
			if head, size, cut := c.cut(msg.Payload); cut {
				msg.Payload, msg.Size = head, size
				c.s.log.Warn("payload over max_payload: kept its beginning only", "topic", m.Topic(), "bytes", size)
			}
			r := c.s.core.Deliver(msg)
			select {
			case acks <- ack{m: m, r: r}:
			case <-c.stop:
				return
			}
		}
	}
}

// acknowledge sends the PUBACKs in arrival order, each once the engine has released its receipt.
func (c *conn) acknowledge(ctx context.Context, acks <-chan ack) {
	for {
		var a ack
		select {
		case a = <-acks:
		case <-c.stop:
			return
		}
		select {
		case <-a.r.Done():
		case <-c.stop:
			return
		}
		if err := a.r.Err(); err != nil {
			// Not acknowledged: neither is anything after it, and the broker sends them all again.
			c.s.log.Error("a received configuration could not be stored; reconnecting so the broker sends it again", "topic", a.m.Topic(), "err", err)
			c.end(err)
			<-c.stop
			return
		}
		a.m.Ack()
	}
}

// send publishes the outbox on this connection: every entry once, in order, at most window in
// flight. A message leaves the outbox only when the broker acknowledged it on this connection; a
// publish that fails on a live connection is sent again after a pause, without waiting for a
// reconnect, and a slow one never holds up the others. It starts once subscribed: an answer
// waiting from an earlier connection goes at the QoS the broker takes, after the SUBACK.
//
// An answer sent at QoS 0 because of pubMax is done once written: on such a broker nothing better
// exists, and the pull at every connect brings the server's newest back.
//
// A message to a topic the outbox calls suspect (a connection ended while one to it waited for
// its PUBACK) goes alone: nothing else is in flight with it, so that when the broker closes the
// connection for it (a publish it refuses) the close counts against that topic only
// (engine.Outbox.Ended, from settle).
func (c *conn) send(ctx context.Context) {
	select {
	case <-c.ready:
	case <-ctx.Done():
		return
	case <-c.stop:
		return
	}
	s := &sender{
		c:        c,
		ob:       c.s.core.Outbox(),
		flying:   map[uint64]engine.OutMsg{},
		suspects: map[uint64]bool{},
		results:  make(chan sendResult, sendWindow),
	}
	defer s.handOver()
	for {
		s.take()
		s.publishQueued()
		select {
		case <-ctx.Done():
			return
		case <-c.stop:
			return
		case <-s.ob.Wake():
		case <-s.retryAt:
			s.retryAt = nil
		case r := <-s.results:
			if !s.settled(r) {
				return
			}
		}
	}
}

// sendWindow is how many messages send has published at most without their result.
const sendWindow = 64

// sender is the state of one connection's send loop.
type sender struct {
	c  *conn
	ob *engine.Outbox

	inflight int                      // published, no result yet
	flying   map[uint64]engine.OutMsg // QoS 1, published, not acknowledged (failed ones too)
	suspects map[uint64]bool          // those of flying that went as suspects
	queue    []engine.OutMsg          // taken from the outbox, not yet published
	retry    []engine.OutMsg          // failed publishes, sent again when retryAt fires
	retryAt  <-chan time.Time
	results  chan sendResult
}

// sendResult is how a publish ended: err is nil when the broker acknowledged it (or, at QoS 0,
// when it was written).
type sendResult struct {
	m   engine.OutMsg
	err error
}

// take fills the queue: failed publishes first once their pause is over (they are older than
// anything queued), then the outbox's next entries, up to the window. Nothing new is taken while
// a suspect waits for its PUBACK.
func (s *sender) take() {
	if len(s.retry) > 0 && s.retryAt == nil {
		s.queue, s.retry = append(s.retry, s.queue...), nil
	}
	if n := sendWindow - s.inflight - len(s.queue); n > 0 && len(s.suspects) == 0 {
		s.queue = append(s.queue, s.ob.Next(s.c.gen, n)...)
	}
}

// publishQueued publishes the queue's head while the window has room and the head may go.
func (s *sender) publishQueued() {
	for len(s.queue) > 0 && s.inflight < sendWindow && s.mayGo(s.queue[0]) {
		m := s.queue[0]
		s.queue = s.queue[1:]
		s.publish(m)
	}
}

// mayGo reports whether m may be published now, and marks it a suspect if it goes as one. A
// message sent again (still in flying) always may; otherwise, while a suspect waits for its
// PUBACK nothing else goes, and a suspect itself waits until nothing is in flight, so that a
// close the broker makes for it counts against its topic alone.
func (s *sender) mayGo(m engine.OutMsg) bool {
	if _, again := s.flying[m.Seq]; again {
		return true
	}
	if len(s.suspects) > 0 {
		return false
	}
	if s.ob.Suspect(m.Topic) {
		if len(s.flying) > 0 {
			return false
		}
		s.suspects[m.Seq] = true
	}
	return true
}

// publish hands m to paho at the QoS this connection publishes at, and its result to results
// once paho has one (or not at all, once the connection is closed).
func (s *sender) publish(m engine.OutMsg) {
	c := s.c
	s.inflight++
	qos := min(m.QoS, c.pubMax)
	if qos > 0 {
		s.flying[m.Seq] = m
	}
	tok := c.client.Publish(m.Topic, qos, false, m.Payload)
	s.ob.Sent(m.Seq)
	go func() {
		select {
		case <-tok.Done():
		case <-c.stop:
			return
		}
		select {
		case s.results <- sendResult{m: m, err: tok.Error()}:
		case <-c.stop:
		}
	}()
}

// settled takes in a publish's result: a failed QoS 1 publish is sent again after a pause (it is
// still owed its PUBACK: it stays in flying, and a suspect keeps the others back); a success is
// delivery only on the current connection. It reports false when the connection has ended.
func (s *sender) settled(r sendResult) bool {
	s.inflight--
	if r.err != nil {
		s.c.s.log.Warn("publish failed; sending it again", "topic", r.m.Topic, "err", r.err)
		if r.m.QoS > 0 {
			s.retry = append(s.retry, r.m)
			if s.retryAt == nil {
				s.retryAt = clock.After(s.c.s.opt.Clock, time.Second)
			}
		}
		return true
	}
	if g, _, _ := s.c.s.current(); g != s.c.gen {
		return false // completed after its connection ended: not proof of delivery
	}
	delete(s.flying, r.m.Seq)
	delete(s.suspects, r.m.Seq)
	if r.m.QoS > 0 {
		if !r.m.Request {
			s.c.s.opt.Pause(engine.StepPublished)
		}
		s.ob.Delivered(r.m)
		s.c.s.log.Debug("answer delivered", "endpoint", r.m.Endpoint, "topic", r.m.Topic, "qos", r.m.QoS)
	}
	return true
}

// handOver leaves to settle what the connection's end left without a PUBACK.
func (s *sender) handOver() {
	for _, m := range s.flying {
		s.c.flying = append(s.c.flying, m)
	}
}

// settle tells the outbox, once the connection has ended and its goroutines are done, what the
// broker's close left without a PUBACK, and logs what that set aside. Only a close the broker (or
// the network) made counts: the agent ends connections itself too (an overload, a reload, a stop).
func (c *conn) settle() {
	if !c.byBroker.Load() || len(c.flying) == 0 {
		return
	}
	for _, a := range c.s.core.Outbox().Ended(c.flying) {
		c.s.log.Warn("an answer was set aside: each time it was published, the broker ended the connection before acknowledging it (a publish its ACL refuses?); it is kept and sent again later, the others flow meanwhile",
			"topic", a.Topic, "endpoint", a.Endpoint, "closes", a.Closes, "retry_in", a.Wait)
	}
}

// cut reports whether payload is one that limitConn cut short, and returns its beginning and the
// size it had.
func (c *conn) cut(payload []byte) (head []byte, size int, ok bool) {
	if len(payload) < len(c.nonce)+8 || !bytes.Equal(payload[:len(c.nonce)], c.nonce[:]) {
		return nil, 0, false
	}
	size = int(binary.BigEndian.Uint64(payload[len(c.nonce):]))
	return payload[len(c.nonce)+8:], size, true
}
