package transport

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// gatedCore is the real engine with two gates a test holds: the delivery of one message waits at
// the first, so the inbox fills as it does behind an engine that is busy; Online for the first
// connection returns only at the second, so the session does not yet act on the end of that
// connection, as a busy agent may not at once.
type gatedCore struct {
	*engine.Engine
	hold     []byte        // the payload whose delivery waits
	held     chan struct{} // closed when that delivery has begun
	gate     chan struct{} // closed by the test: that delivery goes on
	online   chan uint64   // each Online's generation
	online1  chan struct{} // closed by the test: Online(1) returns
	heldOnce sync.Once

	mu        sync.Mutex
	delivered [][]byte // payloads, in delivery order
	gens      []int    // per delivery: the number of Online calls before it
	onlines   int
	notify    chan struct{}
}

func newGatedCore(eng *engine.Engine, hold []byte) *gatedCore {
	return &gatedCore{Engine: eng, hold: hold, held: make(chan struct{}), gate: make(chan struct{}),
		online: make(chan uint64, 16), online1: make(chan struct{}), notify: make(chan struct{}, 1)}
}

func (c *gatedCore) Deliver(m engine.Message) *engine.Receipt {
	c.mu.Lock()
	c.delivered = append(c.delivered, bytes.Clone(m.Payload))
	c.gens = append(c.gens, c.onlines)
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
	if bytes.Equal(m.Payload, c.hold) {
		c.heldOnce.Do(func() { close(c.held) })
		<-c.gate
	}
	return c.Engine.Deliver(m)
}

func (c *gatedCore) Online(gen uint64, persistent bool) {
	c.Engine.Online(gen, persistent)
	c.mu.Lock()
	c.onlines++
	c.mu.Unlock()
	c.online <- gen
	if gen == 1 {
		<-c.online1
	}
}

// deliveredOn returns the payloads delivered after the n-th Online call and before the next one.
func (c *gatedCore) deliveredOn(n int) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]byte
	for i, p := range c.delivered {
		if c.gens[i] == n {
			out = append(out, p)
		}
	}
	return out
}

// waitDelivered waits until payload has been delivered.
func (c *gatedCore) waitDelivered(t *testing.T, payload []byte) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		c.mu.Lock()
		found := false
		for _, p := range c.delivered {
			found = found || bytes.Equal(p, payload)
		}
		c.mu.Unlock()
		if found {
			return
		}
		select {
		case <-c.notify:
		case <-deadline:
			t.Fatalf("%.40s... never delivered to the engine", payload)
		}
	}
}

// push is a cmx3 push with id whose payload is exactly size bytes (at least the JSON around it).
func push(id int, fill byte, size int) []byte {
	head := fmt.Sprintf(`{"id": %d, "entries": ["`, id)
	n := max(size-len(head)-len(`"]}`), 1)
	return []byte(head + strings.Repeat(string(fill), n) + `"]}`)
}

func TestInbox_AfterAQoS1MessageIsDroppedNothingLaterIsDeliveredOrAcknowledgedOnThatConnection(t *testing.T) {
	b := mqtttest.Start(t)
	cfg, out := oneEndpointConfig(t, b.URL, 0)
	const maxPayload = 64 << 10
	cfg.Agent.MaxPayload = maxPayload
	eng, err := engine.New(cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); eng.Run(ctx) }()

	const clientID = "cmx-inbox-test"
	topic := cmx.Prefix("v1", "cmx", "gw-1") + "/json"
	first := push(1, 'a', 40)
	core := newGatedCore(eng, first)
	s := New(cfg.Broker, core, Options{ClientID: clientID, MaxPayload: maxPayload})
	const newerSize = 200
	handed := make(chan struct{}, 1) // paho handed the newer push over, whatever the inbox did
	s.added = func(m mqtt.Message) {
		if len(m.Payload()) == newerSize {
			handed <- struct{}{}
		}
	}
	wg.Add(1)
	go func() { defer wg.Done(); s.Run(ctx) }()
	var gateOnce, onlineOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(core.gate) }) }
	letOnline := func() { onlineOnce.Do(func() { close(core.online1) }) }
	t.Cleanup(func() { openGate(); letOnline(); cancel(); wg.Wait(); eng.Close() })

	waitOnline := func(want uint64) {
		t.Helper()
		select {
		case gen := <-core.online:
			if gen != want {
				t.Fatalf("online on connection %d, want %d", gen, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("connection %d never online", want)
		}
	}
	waitOnline(1)

	// The inbox takes 4*maxPayload + 1 MiB = 1,310,720 bytes. With the first push held by the
	// engine, 20 fillers of 64,000 bytes fit (1,280,000), the older push of the same size does not,
	// and the newer small one would.
	const size = 64_000
	pub := b.Client(t)
	pub.Publish(t, topic, 1, first)
	select {
	case <-core.held:
	case <-time.After(20 * time.Second):
		t.Fatal("the first push never reached the engine")
	}
	for i := range 20 {
		pub.Publish(t, topic, 0, push(2+i, 'f', size))
	}
	older := push(100, 'o', size)
	newer := push(101, 'n', newerSize)
	pub.Publish(t, topic, 1, older)
	pub.Publish(t, topic, 1, newer)
	select {
	case <-handed:
	case <-time.After(20 * time.Second):
		t.Fatal("the newer push never reached the agent")
	}

	// The held push goes on; the fillers queued behind it follow in the same pass.
	openGate()
	lastFiller := push(21, 'f', size)
	core.waitDelivered(t, lastFiller)
	wait := time.NewTimer(500 * time.Millisecond) // proves absence: the pass goes on at once
	for done := false; !done; {
		select {
		case <-core.notify:
		case <-wait.C:
			done = true
		}
	}
	for _, p := range core.deliveredOn(1) {
		if bytes.Equal(p, newer) {
			t.Errorf("the push that came after the dropped one was delivered to the engine on the same connection")
		}
	}

	// The session acts on the dropped push now: it reconnects, and the broker sends again the
	// dropped push and the one after it, in order; once it has both acknowledgements, the output
	// holds the newest.
	letOnline()
	waitOnline(2)
	sent := regexp.MustCompile(`Sending PUBLISH to ` + clientID + ` \(d(\d), q1, r0, m(\d+), '` + regexp.QuoteMeta(topic) + `', \.\.\. \((\d+) bytes\)\)`)
	var again []string // sizes of the pushes sent again on the second connection, in order
	// The broker's log is a file: poll it.
	testkit.Eventually(t, 30*time.Second, func() bool {
		conns := brokerConns(b.Log(), clientID)
		again = again[:0]
		acked := 0
		for _, m := range sent.FindAllStringSubmatch(conns[len(conns)-1], -1) {
			if m[1] == "1" {
				again = append(again, m[3])
			}
			if strings.Contains(conns[len(conns)-1], "Received PUBACK from "+clientID+" (Mid: "+m[2]+",") {
				acked++
			}
		}
		return len(conns) >= 2 && len(again) > 0 && acked == len(again)
	}, "the pushes sent again after reconnecting were not all acknowledged:\n%s", b.Log)
	if want := []string{fmt.Sprint(len(older)), fmt.Sprint(len(newer))}; !slices.Equal(again, want) {
		t.Errorf("sent again after reconnecting: pushes of %v bytes, want %v (the dropped one, then the newer one)", again, want)
	}
	if got, want := readFile(t, out), `["`+strings.Repeat("n", len(newer)-len(`{"id": 101, "entries": ["`)-len(`"]}`))+`"]`; got != want {
		t.Errorf("output %.40q..., want the newest push's entries %.40q...", got, want)
	}
	// On the first connection the broker got no PUBACK for the newer push.
	conn1 := brokerConns(b.Log(), clientID)[0]
	mid := regexp.MustCompile(`Sending PUBLISH to ` + clientID + ` \(d0, q1, r0, m(\d+), '` + regexp.QuoteMeta(topic) + fmt.Sprintf(`', \.\.\. \(%d bytes\)\)`, len(newer))).FindStringSubmatch(conn1)
	if mid == nil {
		t.Fatalf("the broker's log does not show the newer push sent on the first connection:\n%s", conn1)
	}
	if strings.Contains(conn1, "Received PUBACK from "+clientID+" (Mid: "+mid[1]+",") {
		t.Errorf("the newer push (mid %s) was acknowledged on the connection that dropped the older one", mid[1])
	}
}

// brokerConns splits a mosquitto log into the parts that follow each connection of clientID.
func brokerConns(log, clientID string) []string {
	parts := strings.Split(log, " as "+clientID+" (")
	return parts[1:]
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
