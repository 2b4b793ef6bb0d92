package mqtttest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// reconnectInterval caps paho's reconnect backoff so that clients are back
// quickly after a broker Restart.
const reconnectInterval = 100 * time.Millisecond

// disconnectQuiesce is how long paho may finish in-flight work on Disconnect.
const disconnectQuiesce = 250 // milliseconds

// Message is one PUBLISH as the client received it.
type Message struct {
	Topic   string
	Payload []byte
	// QoS is the delivery QoS: min(publish QoS, subscription QoS).
	QoS      byte
	Retained bool
	// Duplicate is the DUP flag: the broker is redelivering it.
	Duplicate bool
}

// String renders the message for failure messages.
func (m Message) String() string {
	const maxPayload = 200
	p := m.Payload
	suffix := ""
	if len(p) > maxPayload {
		p, suffix = p[:maxPayload], fmt.Sprintf("...(%d bytes)", len(m.Payload))
	}
	flags := ""
	if m.Retained {
		flags += ", retained"
	}
	if m.Duplicate {
		flags += ", dup"
	}
	return fmt.Sprintf("%s (qos%d%s) %q%s", m.Topic, m.QoS, flags, p, suffix)
}

// ClientOption changes how Broker.Client connects.
type ClientOption func(*clientConfig)

type clientConfig struct {
	id    string
	clean bool
}

// WithClientID sets the client id instead of a unique generated one.
func WithClientID(id string) ClientOption {
	return func(c *clientConfig) { c.id = id }
}

// WithPersistentSession connects with clean_session=false, so the broker keeps
// the session's subscriptions and queues QoS 1/2 messages while the client is
// away. Pair it with WithClientID to resume the session from a new Client;
// queued messages arrive before any Subscribe, read them from Inbox.
func WithPersistentSession() ClientOption {
	return func(c *clientConfig) { c.clean = false }
}

// discardStore is a paho Store that keeps nothing. paho's resume() after a
// reconnect walks its store while new publishes are already going out and
// sets the DUP flag on packets the writer is encoding: a data race
// (eclipse-paho/paho.mqtt.golang#703) that a test publishing right after
// Broker.Restart hits under -race. With nothing stored there is nothing to
// resume; in-flight messages of a lost connection are not resent, as for any
// clean session.
type discardStore struct{}

func (discardStore) Open()                             {}
func (discardStore) Put(string, packets.ControlPacket) {}
func (discardStore) Get(string) packets.ControlPacket  { return nil }
func (discardStore) All() []string                     { return nil }
func (discardStore) Del(string)                        {}
func (discardStore) Close()                            {}
func (discardStore) Reset()                            {}

// Client is a paho MQTT 3.1.1 client connected to a Broker that records every
// message it receives. By default it has a unique id and a clean session.
//
// It reconnects by itself after a broker Restart and, with a clean session,
// subscribes again to its filters; Broker.Start returns only once it has.
// Messages published while it was disconnected are lost to a clean session,
// and it keeps no outbound store: a publish whose acknowledgement was lost
// with the connection is not resent.
type Client struct {
	// ID is the MQTT client id.
	ID string

	broker *Broker
	pc     mqtt.Client
	clean  bool
	inbox  *Sub

	mu             sync.Mutex
	subs           []*Sub
	connected      bool // connected and, with a clean session, subscribed again
	resubErr       error
	changed        chan struct{} // closed and replaced when connected changes
	sessionPresent bool
	closed         bool
}

// Client connects a new recording client to the broker and disconnects it
// when the test ends.
func (b *Broker) Client(t testing.TB, opts ...ClientOption) *Client {
	t.Helper()
	cfg := clientConfig{clean: true}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.id == "" {
		b.mu.Lock()
		b.clientSeq++
		cfg.id = fmt.Sprintf("mqtttest-%d", b.clientSeq)
		b.mu.Unlock()
	}
	c := dial(t, b, b.URL, cfg)
	b.mu.Lock()
	b.clients[c] = struct{}{}
	b.mu.Unlock()
	return c
}

// Dial connects a recording client to a broker this package does not run
// (a RabbitMQ node, an embedded broker) at url, and disconnects it when the
// test ends. Without WithClientID its id is random. Disconnect does not wait
// for the broker's log there: there is none to read.
func Dial(t testing.TB, url string, opts ...ClientOption) *Client {
	t.Helper()
	cfg := clientConfig{clean: true}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.id == "" {
		cfg.id = fmt.Sprintf("mqtttest-%d-%d", os.Getpid(), dialSeq.Add(1))
	}
	return dial(t, nil, url, cfg)
}

var dialSeq atomic.Int64

func dial(t testing.TB, b *Broker, url string, cfg clientConfig) *Client {
	t.Helper()
	c := &Client{
		ID:      cfg.id,
		broker:  b,
		clean:   cfg.clean,
		inbox:   newSub("(inbox of " + cfg.id + ")"),
		changed: make(chan struct{}),
	}

	// Ordered delivery runs the handler on paho's router goroutine, one
	// message at a time, which is what keeps arrival order. It is safe here
	// because record never blocks. The handler is the default one, set
	// before Connect, so a persistent session's queued messages are recorded
	// (and acknowledged) even before any Subscribe.
	o := mqtt.NewClientOptions().
		AddBroker(url).
		SetClientID(cfg.id).
		SetCleanSession(cfg.clean).
		SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { c.record(m) }).
		SetConnectRetry(false).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(reconnectInterval).
		SetConnectTimeout(opTimeout).
		SetStore(discardStore{}).
		SetOnConnectHandler(c.onConnect).
		SetConnectionLostHandler(func(mqtt.Client, error) { c.setConnected(false, nil) })
	c.pc = mqtt.NewClient(o)

	tok := c.pc.Connect()
	if !tok.WaitTimeout(opTimeout) {
		t.Fatalf("mqtttest: connect %s to %s: no CONNACK within %v", cfg.id, url, opTimeout)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("mqtttest: connect %s to %s: %v%s", cfg.id, url, err, c.brokerLogTail())
	}
	c.mu.Lock()
	c.sessionPresent = tok.(*mqtt.ConnectToken).SessionPresent()
	c.mu.Unlock()
	// onConnect runs on its own goroutine; waiting for it means the first
	// connection never races a Subscribe into a double subscription.
	if err := c.waitConnected(true, opTimeout); err != nil {
		t.Fatalf("mqtttest: connect %s: %v", cfg.id, err)
	}
	t.Cleanup(c.close)
	return c
}

func (c *Client) brokerLogTail() string {
	if c.broker == nil {
		return ""
	}
	return "\n" + c.broker.logTail()
}

// SessionPresent reports the CONNACK's session-present flag of the first
// connection: true when the broker resumed a persistent session.
func (c *Client) SessionPresent() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessionPresent
}

func (c *Client) onConnect(pc mqtt.Client) {
	var err error
	if c.clean {
		// A clean session lost its subscriptions with the connection.
		c.mu.Lock()
		subs := append([]*Sub(nil), c.subs...)
		c.mu.Unlock()
		for _, s := range subs {
			if e := waitToken(pc.Subscribe(s.filter, s.qos, nil)); e != nil {
				err = fmt.Errorf("subscribe again to %q: %w", s.filter, e)
				break
			}
		}
	}
	c.setConnected(true, err)
}

func (c *Client) setConnected(connected bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.connected = connected
	c.resubErr = err
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Client) waitConnected(want bool, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		got, err, changed := c.connected, c.resubErr, c.changed
		c.mu.Unlock()
		if got == want {
			if want {
				return err
			}
			return nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			if want {
				return fmt.Errorf("not connected within %v", timeout)
			}
			return fmt.Errorf("did not notice the lost connection within %v", timeout)
		}
	}
}

// record must never block: with ordered delivery it runs on paho's router.
func (c *Client) record(pm mqtt.Message) {
	m := Message{
		Topic:     pm.Topic(),
		Payload:   append([]byte(nil), pm.Payload()...),
		QoS:       pm.Qos(),
		Retained:  pm.Retained(),
		Duplicate: pm.Duplicate(),
	}
	c.mu.Lock()
	subs := c.subs
	c.mu.Unlock()
	c.inbox.add(m)
	for _, s := range subs {
		if TopicMatches(s.filter, m.Topic) {
			s.add(m)
		}
	}
}

// Publish publishes payload and waits until paho reports it sent (QoS 0) or
// acknowledged (QoS 1 and 2).
func (c *Client) Publish(t testing.TB, topic string, qos byte, payload []byte) {
	t.Helper()
	c.publish(t, topic, qos, false, payload)
}

// PublishRetained is Publish with the retain flag set.
func (c *Client) PublishRetained(t testing.TB, topic string, qos byte, payload []byte) {
	t.Helper()
	c.publish(t, topic, qos, true, payload)
}

// TryPublish is Publish that returns the error instead of failing the test,
// for servers that must retry: a clustered broker may drop a publisher's
// connection during a failover.
func (c *Client) TryPublish(topic string, qos byte, payload []byte) error {
	return c.tryPublish(topic, qos, false, payload)
}

func (c *Client) tryPublish(topic string, qos byte, retained bool, payload []byte) error {
	if err := waitToken(c.pc.Publish(topic, qos, retained, payload)); err != nil {
		return fmt.Errorf("mqtttest: %s publish to %q (qos%d): %w", c.ID, topic, qos, err)
	}
	return nil
}

// Connected reports whether the client is connected now (and, with a clean
// session, subscribed again).
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected && !c.closed
}

func (c *Client) publish(t testing.TB, topic string, qos byte, retained bool, payload []byte) {
	t.Helper()
	if err := c.tryPublish(topic, qos, retained, payload); err != nil {
		t.Fatal(err)
	}
}

// Subscribe subscribes to filter and waits for the SUBACK. The returned Sub
// records the messages whose topic matches filter, from the SUBACK on
// (retained ones included).
//
// A message arrives with min(publish QoS, subscription QoS): to assert the
// QoS someone else publishes with, subscribe at QoS 2.
//
// Subs of one Client with overlapping filters both see each copy mosquitto
// sends per matching subscription; use one Client per filter when exact
// counts matter.
func (c *Client) Subscribe(t testing.TB, filter string, qos byte) *Sub {
	t.Helper()
	s := newSub(filter)
	s.qos = qos
	// Registered before subscribing: retained messages can follow the SUBACK
	// immediately.
	c.mu.Lock()
	c.subs = append(append([]*Sub(nil), c.subs...), s)
	c.mu.Unlock()
	tok := c.pc.Subscribe(filter, qos, nil)
	if err := waitToken(tok); err != nil {
		t.Fatalf("mqtttest: %s subscribe to %q: %v", c.ID, filter, err)
	}
	// paho reports a refused subscription (0x80) only in the token's result.
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		if granted, ok := st.Result()[filter]; ok && granted == 0x80 {
			t.Fatalf("mqtttest: %s subscribe to %q: refused by the broker", c.ID, filter)
		}
	}
	return s
}

// Inbox returns a Sub of every message this client received, whatever the
// subscription, including a persistent session's queued messages that arrive
// right after CONNACK.
func (c *Client) Inbox() *Sub {
	return c.inbox
}

// Disconnect sends DISCONNECT and waits until the broker has logged it, so a
// message published afterwards is queued for a persistent session rather than
// sent to this connection. The client does not reconnect afterwards.
func (c *Client) Disconnect(t testing.TB) {
	t.Helper()
	if c.broker == nil {
		c.close()
		return
	}
	marker := "Client " + c.ID + " disconnected."
	before := strings.Count(c.broker.Log(), marker)
	c.mu.Lock()
	wasConnected := c.connected && !c.closed
	c.mu.Unlock()
	c.close()
	if !wasConnected {
		return
	}
	if err := c.broker.waitLog(marker, before+1, opTimeout); err != nil {
		t.Fatalf("mqtttest: disconnect %s: %v\n%s", c.ID, err, c.broker.logTail())
	}
}

func (c *Client) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()

	if c.broker != nil {
		c.broker.mu.Lock()
		delete(c.broker.clients, c)
		c.broker.mu.Unlock()
	}
	c.pc.Disconnect(disconnectQuiesce)
}

func waitToken(tok mqtt.Token) error {
	if !tok.WaitTimeout(opTimeout) {
		return fmt.Errorf("no answer within %v", opTimeout)
	}
	return tok.Error()
}

// Sub is the record of messages for one subscription, in arrival order, with
// a read cursor for Next and NextMatching.
type Sub struct {
	filter string
	qos    byte

	mu      sync.Mutex
	msgs    []Message
	next    int           // index of the first message not yet returned
	changed chan struct{} // closed and replaced on every new message
}

func newSub(filter string) *Sub {
	return &Sub{filter: filter, changed: make(chan struct{})}
}

func (s *Sub) add(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

// Next returns the next message in arrival order, waiting up to timeout for
// it to arrive; the test fails if none does.
func (s *Sub) Next(t testing.TB, timeout time.Duration) Message {
	t.Helper()
	return s.NextMatching(t, timeout, func(Message) bool { return true })
}

// NextMatching returns the next message for which pred is true, consuming and
// skipping the ones before it; the test fails if none arrives within timeout.
func (s *Sub) NextMatching(t testing.TB, timeout time.Duration, pred func(Message) bool) Message {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		for s.next < len(s.msgs) {
			m := s.msgs[s.next]
			s.next++
			if pred(m) {
				s.mu.Unlock()
				return m
			}
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("mqtttest: no matching message on %s within %v; received so far:%s", s.filter, timeout, s.summary())
			return Message{}
		}
	}
}

// Follow calls fn with every message of the Sub, those received before
// included, in arrival order and on the caller's goroutine, until ctx ends.
// It has its own cursor: Next and NextMatching are not affected. fn may block
// and publish (it does not run on paho's router), e.g. a server answering
// requests.
func (s *Sub) Follow(ctx context.Context, fn func(Message)) {
	for i := 0; ; {
		s.mu.Lock()
		msgs, changed := s.msgs[i:], s.changed
		s.mu.Unlock()
		for _, m := range msgs {
			if ctx.Err() != nil {
				return
			}
			fn(m)
		}
		i += len(msgs)
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// All returns a copy of every message received so far, consumed or not.
func (s *Sub) All() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// None asserts that no message beyond those already consumed by Next is
// there or arrives within wait. It is the one fixed time window of this
// package: absence can only be shown by waiting.
func (s *Sub) None(t testing.TB, wait time.Duration) {
	t.Helper()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		s.mu.Lock()
		if s.next < len(s.msgs) {
			m := s.msgs[s.next]
			s.mu.Unlock()
			t.Fatalf("mqtttest: want no message on %s, got %v", s.filter, m)
			return
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			return
		}
	}
}

func (s *Sub) summary() string {
	msgs := s.All()
	if len(msgs) == 0 {
		return " none"
	}
	var b strings.Builder
	for i, m := range msgs {
		fmt.Fprintf(&b, "\n  %d: %v", i, m)
	}
	return b.String()
}

// TopicMatches reports whether an MQTT topic filter matches a topic name,
// with the spec's rules: "+" is one level, a trailing "#" is any number of
// levels including none, and wildcards at the first level do not match
// topics starting with "$". A "$share/GROUP/" prefix is ignored.
func TopicMatches(filter, topic string) bool {
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			filter = f
		}
	}
	fl := strings.Split(filter, "/")
	tl := strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (fl[0] == "+" || fl[0] == "#") {
		return false
	}
	for i, f := range fl {
		if f == "#" {
			return i == len(fl)-1
		}
		if i >= len(tl) {
			return false
		}
		if f != "+" && f != tl[i] {
			return false
		}
	}
	return len(fl) == len(tl)
}
