package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// refuser stands between the agent and a real mosquitto and does what a RabbitMQ node does to a
// session whose classic queue is homed on a dead node: it closes the connection when a SUBSCRIBE
// asks for QoS 1, and passes everything else through. No real broker refuses on demand.
type refuser struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu       sync.Mutex
	refuse   int // QoS 1 SUBSCRIBEs still to refuse; < 0: all
	attempts []attempt
	changed  chan struct{} // closed and replaced on each new attempt
}

// attempt is one connection as the refuser saw it.
type attempt struct {
	Clean   bool // CONNECT asked for a clean session
	QoS     byte // the highest QoS its SUBSCRIBE asked for
	Refused bool
}

func (a attempt) String() string {
	return fmt.Sprintf("{clean:%v qos:%d refused:%v}", a.Clean, a.QoS, a.Refused)
}

func newRefuser(t *testing.T, target string, refuse int) *refuser {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &refuser{t: t, ln: ln, target: target, refuse: refuse, changed: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go r.serve()
	return r
}

func (r *refuser) url() string { return "tcp://" + r.ln.Addr().String() }

func (r *refuser) setRefuse(n int) {
	r.mu.Lock()
	r.refuse = n
	r.mu.Unlock()
}

func (r *refuser) list() []attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.attempts)
}

// waitAttempts waits until n attempts have subscribed or been refused.
func (r *refuser) waitAttempts(n int) []attempt {
	r.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		r.mu.Lock()
		got, ch := slices.Clone(r.attempts), r.changed
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-ch:
		case <-deadline:
			r.t.Fatalf("%d connection attempts subscribed or refused, want %d: %v", len(got), n, got)
		}
	}
}

func (r *refuser) record(a attempt) {
	r.mu.Lock()
	r.attempts = append(r.attempts, a)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *refuser) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		go r.relay(c)
	}
}

func (r *refuser) relay(client net.Conn) {
	defer client.Close()
	broker, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer broker.Close()
	go func() { io.Copy(client, broker); client.Close() }()
	in := bufio.NewReader(client)
	var clean bool
	for {
		pkt, err := readPacket(in)
		if err != nil {
			return
		}
		switch pkt[0] & 0xf0 {
		case 0x10: // CONNECT: flags after the protocol name and level
			if b := body(pkt); len(b) >= 8 {
				clean = b[7]&0x02 != 0
			}
		case 0x80: // SUBSCRIBE: packet id, then (topic, QoS) pairs
			qos := maxQoS(body(pkt))
			r.mu.Lock()
			refuse := qos >= 1 && r.refuse != 0
			if refuse && r.refuse > 0 {
				r.refuse--
			}
			r.mu.Unlock()
			r.record(attempt{Clean: clean, QoS: qos, Refused: refuse})
			if refuse {
				return
			}
		}
		if _, err := broker.Write(pkt); err != nil {
			return
		}
	}
}

// readPacket reads one MQTT control packet whole: fixed header, remaining length, body.
func readPacket(r *bufio.Reader) ([]byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	pkt := []byte{h}
	n, mul := 0, 1
	for i := 0; ; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		pkt = append(pkt, b)
		n += int(b&0x7f) * mul
		if b&0x80 == 0 {
			break
		}
		if i == 3 {
			return nil, errors.New("malformed remaining length")
		}
		mul *= 128
	}
	rest := make([]byte, n)
	if _, err := io.ReadFull(r, rest); err != nil {
		return nil, err
	}
	return append(pkt, rest...), nil
}

func body(pkt []byte) []byte {
	i := 1
	for pkt[i]&0x80 != 0 {
		i++
	}
	return pkt[i+1:]
}

func maxQoS(b []byte) byte {
	var q byte
	for i := 2; i+2 <= len(b); {
		n := int(b[i])<<8 | int(b[i+1])
		i += 2 + n
		if i < len(b) {
			q = max(q, b[i]&0x03)
		}
		i++
	}
	return q
}

// ladderRig is a real engine and session behind a refuser, with the probe timer in the test's hand.
type ladderRig struct {
	t      *testing.T
	broker *mqtttest.Broker
	ref    *refuser
	s      *Session
	out    string
	prefix string

	mu     sync.Mutex
	probes []time.Duration
	fire   chan time.Time
	change chan struct{}
}

func startLadderRig(t *testing.T, refuse int) *ladderRig {
	b := mqtttest.Start(t)
	ref := newRefuser(t, b.URL[len("tcp://"):], refuse)
	cfg, out := oneEndpointConfig(t, ref.url(), 0)
	eng, err := engine.New(cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rig := &ladderRig{t: t, broker: b, ref: ref, out: out, prefix: cmx.Prefix("v1", "cmx", "gw-1"),
		fire: make(chan time.Time), change: make(chan struct{}, 1)}
	rig.s = New(cfg.Broker, eng, Options{
		ClientID: "cmx-ladder-test",
		// The backoff between attempts is the policy's (tested elsewhere); here it only must not
		// spin.
		Sleep: func(ctx context.Context, _ time.Duration) { sleepCtx(ctx, 5*time.Millisecond) },
		After: func(d time.Duration) <-chan time.Time {
			rig.mu.Lock()
			rig.probes = append(rig.probes, d)
			rig.mu.Unlock()
			return rig.fire
		},
		OnChange: func() {
			select {
			case rig.change <- struct{}{}:
			default:
			}
		},
	})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); eng.Run(ctx) }()
	go func() { defer wg.Done(); rig.s.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait(); eng.Close() })
	return rig
}

// waitQoS waits until the session is online with subscriptions at qos.
func (r *ladderRig) waitQoS(qos byte) ConnState {
	r.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if st := r.s.State(); st.Connected && st.QoS == qos {
			return st
		}
		select {
		case <-r.change:
		case <-deadline:
			r.t.Fatalf("not online at QoS %d: %+v; attempts %v", qos, r.s.State(), r.ref.list())
		}
	}
}

func (r *ladderRig) probeDelays() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.probes)
}

func TestSession_QoS1SubscribeAnsweredByAClosedConnectionEndsAtQoS0AndProbesBack(t *testing.T) {
	rig := startLadderRig(t, -1)
	st := rig.waitQoS(0)
	want := []attempt{
		{Clean: false, QoS: 1, Refused: true}, // the resumed session; once may be a network fault
		{Clean: false, QoS: 1, Refused: true}, // twice is a refusal
		{Clean: true, QoS: 1, Refused: true},  // a fresh session, refused as well
		{Clean: true, QoS: 0},                 // QoS 0 is granted
	}
	if got := rig.ref.list(); !slices.Equal(got, want) {
		t.Fatalf("attempts %v, want %v", got, want)
	}
	if d := rig.probeDelays(); len(d) != 1 || d[0] < ProbeMin/2 || d[0] > ProbeMin {
		t.Errorf("probe delays %v, want one in [%v, %v]", d, ProbeMin/2, ProbeMin)
	}
	if st.QoS1RetryAt.IsZero() {
		t.Errorf("status has no time for the QoS 1 retry: %+v", st)
	}

	// At QoS 0 a push is applied and confirmed, at the QoS it arrived with.
	server := rig.broker.Client(t)
	confirms := server.Subscribe(t, cmx.StatusTopic(cmx.PushTopic(rig.prefix, 0)), 1)
	server.Publish(t, cmx.PushTopic(rig.prefix, 0), 1, []byte(`{"id":"p1","entries":[1]}`))
	m := confirms.Next(t, 10*time.Second)
	if string(m.Payload) != `{"id":"p1","status":"ok"}` || m.QoS != 0 {
		t.Errorf("confirmation %v, want {\"id\":\"p1\",\"status\":\"ok\"} at QoS 0", m)
	}
	if data, err := os.ReadFile(rig.out); err != nil || string(data) != "[1]" {
		t.Errorf("output %q, %v; want [1]", data, err)
	}

	// A probe the broker still refuses goes straight back to QoS 0, and the next probe waits longer.
	rig.fire <- time.Now()
	got := rig.ref.waitAttempts(6)
	if want := []attempt{{Clean: false, QoS: 1, Refused: true}, {Clean: true, QoS: 0}}; !slices.Equal(got[4:], want) {
		t.Fatalf("attempts after a refused probe %v, want %v", got[4:], want)
	}
	rig.waitQoS(0)
	if d := rig.probeDelays(); len(d) != 2 || d[1] < ProbeMin || d[1] > 2*ProbeMin {
		t.Errorf("probe delays %v, want the second in [%v, %v]", d, ProbeMin, 2*ProbeMin)
	}

	// Once the broker grants QoS 1 again, the probe resumes the persistent session at QoS 1.
	rig.ref.setRefuse(0)
	rig.fire <- time.Now()
	got = rig.ref.waitAttempts(7)
	if want := (attempt{Clean: false, QoS: 1}); got[6] != want {
		t.Fatalf("probe %v, want %v", got[6], want)
	}
	if st := rig.waitQoS(1); !st.QoS1RetryAt.IsZero() {
		t.Errorf("status at QoS 1 still has a retry time: %+v", st)
	}
	server.Publish(t, cmx.PushTopic(rig.prefix, 0), 1, []byte(`{"id":"p2","entries":[2]}`))
	m = confirms.NextMatching(t, 10*time.Second, func(m mqtttest.Message) bool { return string(m.Payload) == `{"id":"p2","status":"ok"}` })
	if m.QoS != 1 {
		t.Errorf("confirmation %v at QoS %d, want 1", m, m.QoS)
	}
}

func TestSession_OneConnectionClosedBeforeTheSUBACKResumesTheSameSession(t *testing.T) {
	rig := startLadderRig(t, 1)
	rig.waitQoS(1)
	want := []attempt{{Clean: false, QoS: 1, Refused: true}, {Clean: false, QoS: 1}}
	if got := rig.ref.list(); !slices.Equal(got, want) {
		t.Fatalf("attempts %v, want %v: one closed connection must not throw the session away", got, want)
	}
	if d := rig.probeDelays(); len(d) != 0 {
		t.Errorf("probe scheduled at QoS 1: %v", d)
	}
}

func TestLadder_Rungs(t *testing.T) {
	type ev int
	const (
		refusedSuback ev = iota
		refusedClosed
		granted
		probe
	)
	type want struct {
		clean bool
		qos   byte
	}
	tests := []struct {
		name       string
		persistent bool
		events     []ev
		want       want
	}{
		{"starts on the configured persistent session", true, nil, want{false, 1}},
		{"starts on the configured clean session", false, nil, want{true, 1}},
		{"SUBACK 0x80 goes to a fresh session at once", true, []ev{refusedSuback}, want{true, 1}},
		{"one closed connection retries the same session", true, []ev{refusedClosed}, want{false, 1}},
		{"a closed connection after a granted one counts from zero", true, []ev{refusedClosed, granted, refusedClosed}, want{false, 1}},
		{"a fresh session once subscribed is resumed", true, []ev{refusedSuback, granted}, want{false, 1}},
		{"a refused fresh session goes to QoS 0", true, []ev{refusedSuback, refusedClosed}, want{true, 0}},
		{"a clean session configured skips the fresh rung", false, []ev{refusedClosed, refusedClosed}, want{true, 0}},
		{"a probe tries the persistent session", true, []ev{refusedSuback, refusedSuback, granted, probe}, want{false, 1}},
		{"a refused probe goes back to QoS 0 at once", true, []ev{refusedSuback, refusedSuback, granted, probe, refusedClosed}, want{true, 0}},
		{"a refused QoS 0 starts over", true, []ev{refusedSuback, refusedSuback, refusedSuback}, want{false, 1}},
		{"a probe at QoS 1 does nothing", true, []ev{probe}, want{false, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := ladder{persistent: tt.persistent}
			for _, e := range tt.events {
				switch e {
				case refusedSuback:
					l.refused(false)
				case refusedClosed:
					l.refused(true)
				case granted:
					l.subscribed()
				case probe:
					l.probe()
				}
			}
			if got := (want{l.clean(), l.qos()}); got != tt.want {
				t.Errorf("clean %v qos %d, want clean %v qos %d", got.clean, got.qos, tt.want.clean, tt.want.qos)
			}
		})
	}
}

func TestLadder_ProbeDelayDoublesPerRefusedProbeUpToTheMax(t *testing.T) {
	r := seeded(9)
	for probes, d := range []time.Duration{ProbeMin, 2 * ProbeMin, 4 * ProbeMin, 8 * ProbeMin, 16 * ProbeMin, ProbeMax, ProbeMax} {
		l := ladder{probes: probes}
		for range 50 {
			if got := l.probeDelay(r); got < d/2 || got > d {
				t.Fatalf("after %d refused probes: delay %v, want in [%v, %v]", probes, got, d/2, d)
			}
		}
	}
}
