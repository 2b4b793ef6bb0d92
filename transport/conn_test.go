package transport

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/cmx-agent/cmx-agent/config"
)

type fakeMsg struct {
	topic string
	acked func(string)
}

func (m *fakeMsg) Duplicate() bool   { return false }
func (m *fakeMsg) Qos() byte         { return 1 }
func (m *fakeMsg) Retained() bool    { return false }
func (m *fakeMsg) Topic() string     { return m.topic }
func (m *fakeMsg) MessageID() uint16 { return 1 }
func (m *fakeMsg) Payload() []byte   { return nil }
func (m *fakeMsg) Ack()              { m.acked(m.topic) }

// fakeReceipt stands in for the engine's receipt; the test releases it.
type fakeReceipt struct{ done chan struct{} }

func newFakeReceipt() *fakeReceipt           { return &fakeReceipt{done: make(chan struct{})} }
func (r *fakeReceipt) Done() <-chan struct{} { return r.done }
func (r *fakeReceipt) Err() error            { return nil }
func (r *fakeReceipt) release()              { close(r.done) }

func TestAcknowledge_PUBACKsGoOutInArrivalOrderWhateverOrderTheEngineReleases(t *testing.T) {
	s := New(config.Broker{}, nil, Options{Logger: slog.New(slog.DiscardHandler)})
	c := &conn{s: s, lost: make(chan error, 1), stop: make(chan struct{})}
	var (
		mu    sync.Mutex
		order []string
		acked = make(chan struct{}, 3)
	)
	record := func(topic string) {
		mu.Lock()
		order = append(order, topic)
		mu.Unlock()
		acked <- struct{}{}
	}
	acks := make(chan ack, 3)
	rs := []*fakeReceipt{newFakeReceipt(), newFakeReceipt(), newFakeReceipt()}
	for i, topic := range []string{"a", "b", "c"} {
		acks <- ack{m: &fakeMsg{topic: topic, acked: record}, r: rs[i]}
	}
	go c.acknowledge(context.Background(), acks)
	// The last message's result is committed first (another endpoint, a quicker apply).
	rs[2].release()
	rs[1].release()
	select {
	case <-acked:
		t.Fatal("a PUBACK went out before the one for the message that came first")
	case <-time.After(50 * time.Millisecond): // proves absence
	}
	rs[0].release()
	for range 3 {
		select {
		case <-acked:
		case <-time.After(5 * time.Second):
			t.Fatal("PUBACKs not sent")
		}
	}
	close(c.stop)
	if got := string(bytes.Join([][]byte{[]byte(order[0]), []byte(order[1]), []byte(order[2])}, nil)); got != "abc" {
		t.Errorf("PUBACK order %q, want abc", got)
	}
}

func TestLimitConn_CutsAnOversizedPublishAndKeepsTheStreamInStep(t *testing.T) {
	var stream bytes.Buffer
	big := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	big.Qos, big.MessageID, big.TopicName = 1, 9, "kp1/app/cmx/gw/json"
	big.Payload = append([]byte(`{"id": 42, "entries": ["`), bytes.Repeat([]byte("x"), 200_000)...)
	small := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	small.Qos, small.MessageID, small.TopicName, small.Payload = 1, 10, "kp1/app/cmx/gw/json", []byte(`{"entries": []}`)
	ping := packets.NewControlPacket(packets.Pingresp)
	for _, p := range []packets.ControlPacket{small, big, ping, small} {
		if err := p.Write(&stream); err != nil {
			t.Fatal(err)
		}
	}
	client, server := net.Pipe()
	go func() { server.Write(stream.Bytes()); server.Close() }()
	nonce := bytes.Repeat([]byte{7}, 16)
	lc := newLimitConn(client, 1000, nonce)

	want := []func(packets.ControlPacket) bool{
		func(p packets.ControlPacket) bool {
			pp, ok := p.(*packets.PublishPacket)
			return ok && bytes.Equal(pp.Payload, small.Payload)
		},
		func(p packets.ControlPacket) bool {
			pp, ok := p.(*packets.PublishPacket)
			if !ok || pp.MessageID != 9 || pp.Qos != 1 || pp.TopicName != big.TopicName || len(pp.Payload) != 16+8+headLen {
				return false
			}
			c := &conn{nonce: [16]byte(nonce)}
			head, size, cut := c.cut(pp.Payload)
			return cut && size == len(big.Payload) && bytes.HasPrefix(big.Payload, head)
		},
		func(p packets.ControlPacket) bool { _, ok := p.(*packets.PingrespPacket); return ok },
		func(p packets.ControlPacket) bool {
			pp, ok := p.(*packets.PublishPacket)
			return ok && pp.MessageID == 10
		},
	}
	for i, ok := range want {
		p, err := packets.ReadPacket(lc)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if !ok(p) {
			t.Errorf("packet %d read as %v", i, p)
		}
	}
}

// qos0Msg is a QoS 0 message with an empty payload.
type qos0Msg struct{ fakeMsg }

func (m *qos0Msg) Qos() byte { return 0 }

// The inbox's bound is on what it holds in memory, and a message costs its topic and its own
// record besides its payload: a flood of messages with empty payloads, behind an engine that takes
// nothing for a while, must not grow the inbox without bound.
func TestInbox_MessagesWithEmptyPayloadsCountAgainstItsBound(t *testing.T) {
	s := New(config.Broker{}, nil, Options{Logger: slog.New(slog.DiscardHandler), MaxPayload: 1024})
	c := &conn{s: s, lost: make(chan error, 1), stop: make(chan struct{}), wake: make(chan struct{}, 1)}
	const topic = "kp1/app/cmx/gw/json"
	for range 200_000 {
		c.add(&qos0Msg{fakeMsg{topic: topic}})
	}
	c.mu.Lock()
	queued := len(c.msgs)
	c.mu.Unlock()
	if limit := s.maxInboxBytes() / len(topic); queued > limit {
		t.Errorf("%d empty messages queued: their topics alone take %d bytes, over the inbox's bound of %d",
			queued, queued*len(topic), s.maxInboxBytes())
	}
}
