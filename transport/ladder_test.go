package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// refuser stands between the agent and a real mosquitto and refuses SUBSCRIBEs on demand, which
// no real broker does: as a RabbitMQ node does to a session whose classic queue is homed on a dead
// node (it closes the connection when a SUBSCRIBE asks for QoS 1), or as a broker's ACL does (it
// turns the SUBACK's code for a denied filter into 0x80). Everything else passes through.
type refuser struct {
	t      *testing.T
	ln     net.Listener
	target string

	now func() time.Time // the agent's clock

	mu       sync.Mutex
	refuse   int             // QoS 1 SUBSCRIBEs still to refuse by closing; < 0: all
	deny     map[string]bool // filters whose SUBACK code becomes 0x80
	denyPub  map[string]bool // topics a PUBLISH to closes the connection (RabbitMQ's topic permissions)
	pubClose int             // connections closed so far for a PUBLISH to a denied topic
	attempts []attempt
	pubQoS   []byte        // the QoS of each PUBLISH the agent sent, in order
	changed  chan struct{} // closed and replaced on each CONNECT and SUBSCRIBE
}

// attempt is one connection as the refuser saw it.
type attempt struct {
	Clean      bool // CONNECT asked for a clean session
	Subscribed bool // it sent a SUBSCRIBE
	QoS        byte // the highest QoS that SUBSCRIBE asked for
	Refused    bool
	At         time.Time // the agent's clock at the CONNECT
}

// key leaves out the time, for comparing with a wanted list.
func (a attempt) key() attempt { a.At = time.Time{}; return a }

func (a attempt) String() string {
	if !a.Subscribed {
		return fmt.Sprintf("{clean:%v no SUBSCRIBE}", a.Clean)
	}
	return fmt.Sprintf("{clean:%v qos:%d refused:%v}", a.Clean, a.QoS, a.Refused)
}

func keys(as []attempt) []attempt {
	out := make([]attempt, len(as))
	for i, a := range as {
		out[i] = a.key()
	}
	return out
}

func newRefuser(t *testing.T, target string, refuse int, now func() time.Time) *refuser {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &refuser{t: t, ln: ln, target: target, refuse: refuse, now: now, changed: make(chan struct{})}
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

func (r *refuser) denyFilters(filters ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deny = setOf(filters)
}

// denyPublish makes a PUBLISH to one of topics close the connection instead of reaching the
// broker, as RabbitMQ 3.10 does when its topic permissions refuse it (MQTT 3.1.1 has no negative
// PUBACK).
func (r *refuser) denyPublish(topics ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.denyPub = setOf(topics)
}

func setOf(items []string) map[string]bool {
	m := make(map[string]bool, len(items))
	for _, it := range items {
		m[it] = true
	}
	return m
}

// publishCloses counts the connections closed for a PUBLISH to a denied topic.
func (r *refuser) publishCloses() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pubClose
}

// published lists the QoS of every PUBLISH the agent sent so far.
func (r *refuser) published() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pubQoS)
}

func (r *refuser) list() []attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.attempts)
}

// waitFor waits until the attempts so far satisfy done.
func (r *refuser) waitFor(what string, done func([]attempt) bool) []attempt {
	r.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		r.mu.Lock()
		got, ch := slices.Clone(r.attempts), r.changed
		r.mu.Unlock()
		if done(got) {
			return got
		}
		select {
		case <-ch:
		case <-deadline:
			r.t.Fatalf("not %s: attempts %v", what, got)
		}
	}
}

// add records a new connection and returns its index.
func (r *refuser) add(a attempt) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts = append(r.attempts, a)
	r.notify()
	return len(r.attempts) - 1
}

// update changes attempt i.
func (r *refuser) update(i int, f func(*attempt)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.attempts[i])
	r.notify()
}

// notify wakes the waiters; r.mu is held.
func (r *refuser) notify() {
	close(r.changed)
	r.changed = make(chan struct{})
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
	var denyMu sync.Mutex
	denied := map[uint16][]bool{} // per SUBSCRIBE packet id: which of its filters to refuse
	go func() {
		defer client.Close()
		in := bufio.NewReader(broker)
		for {
			pkt, err := readPacket(in)
			if err != nil {
				return
			}
			if pkt[0] == 0x90 { // SUBACK: packet id, then a code per filter
				b := body(pkt)
				denyMu.Lock()
				for i, d := range denied[uint16(b[0])<<8|uint16(b[1])] {
					if d && 2+i < len(b) {
						b[2+i] = 0x80
					}
				}
				denyMu.Unlock()
			}
			if _, err := client.Write(pkt); err != nil {
				return
			}
		}
	}()
	in := bufio.NewReader(client)
	idx := -1
	for {
		pkt, err := readPacket(in)
		if err != nil {
			return
		}
		switch pkt[0] & 0xf0 {
		case 0x10: // CONNECT: flags after the protocol name and level
			clean := false
			if b := body(pkt); len(b) >= 8 {
				clean = b[7]&0x02 != 0
			}
			idx = r.add(attempt{Clean: clean, At: r.now()})
		case 0x30: // PUBLISH: its QoS in the fixed header's flags, then the topic
			r.mu.Lock()
			r.pubQoS = append(r.pubQoS, pkt[0]>>1&0x03)
			b := body(pkt)
			n := 0
			if len(b) >= 2 {
				n = int(b[0])<<8 | int(b[1])
			}
			deny := len(b) >= 2+n && r.denyPub[string(b[2:2+n])]
			if deny {
				r.pubClose++
				r.notify()
			}
			r.mu.Unlock()
			if deny {
				return
			}
		case 0x80: // SUBSCRIBE: packet id, then (topic, QoS) pairs
			qos := maxQoS(body(pkt))
			r.mu.Lock()
			refuse := qos >= 1 && r.refuse != 0
			if refuse && r.refuse > 0 {
				r.refuse--
			}
			r.mu.Unlock()
			r.update(idx, func(a *attempt) { a.Subscribed, a.QoS, a.Refused = true, qos, refuse })
			if refuse {
				return
			}
			b := body(pkt)
			r.mu.Lock()
			var deny []bool
			for _, f := range filtersOf(b) {
				deny = append(deny, r.deny[f])
			}
			r.mu.Unlock()
			denyMu.Lock()
			denied[uint16(b[0])<<8|uint16(b[1])] = deny
			denyMu.Unlock()
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

// filtersOf lists the topic filters of a SUBSCRIBE's body, in order.
func filtersOf(b []byte) []string {
	var out []string
	for i := 2; i+2 <= len(b); {
		n := int(b[i])<<8 | int(b[i+1])
		if i+2+n > len(b) {
			break
		}
		out = append(out, string(b[i+2:i+2+n]))
		i += 3 + n
	}
	return out
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

// ladderRig is a real engine and session behind a refuser, on a clock that moves only when the
// session sleeps (so its backoff takes no real time), with the probe timer in the test's hand.
type ladderRig struct {
	t      *testing.T
	broker *mqtttest.Broker
	ref    *refuser
	s      *Session
	eng    *engine.Engine
	out    string
	prefix string
	ctx    context.Context
	wg     sync.WaitGroup

	logs setAsideLog

	mu     sync.Mutex
	clock  time.Time
	sleeps []time.Duration
	probes []time.Duration
	probe  *heldTimer // the armed probe, fired by fireProbe
	change chan struct{}
}

// rigClock is the rig's clock: a wait (the session's backoff) moves it at once by its length, after
// a real millisecond so that a refusing loop does not spin; the probe (the session's AfterFunc)
// fires when the test calls fireProbe.
type rigClock struct{ r *ladderRig }

func (c rigClock) Now() time.Time { return c.r.now() }

func (c rigClock) NewTimer(d time.Duration) clock.Timer {
	c.r.mu.Lock()
	c.r.clock = c.r.clock.Add(d)
	c.r.sleeps = append(c.r.sleeps, d)
	c.r.mu.Unlock()
	return clock.Real{}.NewTimer(time.Millisecond)
}

func (c rigClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	c.r.probes = append(c.r.probes, d)
	t := &heldTimer{r: c.r, f: f}
	c.r.probe = t
	return t
}

// heldTimer is the armed probe: it fires only by fireProbe.
type heldTimer struct {
	r       *ladderRig
	f       func()
	stopped bool // guarded by r.mu
}

func (t *heldTimer) C() <-chan time.Time { return nil }

func (t *heldTimer) Stop() bool {
	t.r.mu.Lock()
	defer t.r.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	if t.r.probe == t {
		t.r.probe = nil
	}
	return was
}

func (t *heldTimer) Reset(time.Duration) bool {
	t.r.t.Error("the session reset its probe; the rig does not model that")
	return false
}

// fireProbe fires the armed probe, waiting for the session to arm one.
func (r *ladderRig) fireProbe() {
	r.t.Helper()
	var armed *heldTimer
	testkit.Eventually(r.t, 20*time.Second, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		armed, r.probe = r.probe, nil
		if armed == nil {
			return false
		}
		armed.stopped = true
		return true
	}, "no probe armed")
	go armed.f()
}

func startLadderRig(t *testing.T, refuse int, brokerOpts mqtttest.Options, deny ...string) *ladderRig {
	rig := newLadderRig(t, refuse, brokerOpts, deny...)
	rig.run()
	return rig
}

// newLadderRig sets the rig up with its engine running and the session not yet started, so a
// test can give the engine something to answer first.
func newLadderRig(t *testing.T, refuse int, brokerOpts mqtttest.Options, deny ...string) *ladderRig {
	return newLadderRigFor(t, []string{"gw-1"}, refuse, brokerOpts, deny...)
}

// newLadderRigFor is newLadderRig for endpoints of the given tokens; out is the first one's.
func newLadderRigFor(t *testing.T, tokens []string, refuse int, brokerOpts mqtttest.Options, deny ...string) *ladderRig {
	b := mqtttest.StartWith(t, brokerOpts)
	rig := &ladderRig{t: t, broker: b, logs: newSetAsideLog(), prefix: cmx.Prefix("v1", "cmx", "gw-1"), clock: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		change: make(chan struct{}, 1)}
	rig.ref = newRefuser(t, b.URL[len("tcp://"):], refuse, rig.now)
	rig.ref.denyFilters(deny...)
	cfg, out := endpointsConfig(t, rig.ref.url(), 0, tokens...)
	rig.out = out
	eng, err := engine.New(cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rig.eng = eng
	ctx, cancel := context.WithCancel(context.Background())
	rig.ctx = ctx
	rig.s = New(cfg.Broker, eng, Options{
		Logger:   slog.New(rig.logs),
		ClientID: "cmx-ladder-test",
		Rand:     seeded(11),
		Clock:    rigClock{rig},
		OnChange: func() {
			select {
			case rig.change <- struct{}{}:
			default:
			}
		},
	})
	rig.wg.Add(1)
	go func() { defer rig.wg.Done(); eng.Run(ctx) }()
	t.Cleanup(func() { cancel(); rig.wg.Wait(); eng.Close() })
	return rig
}

// run starts the session.
func (r *ladderRig) run() {
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.s.Run(r.ctx) }()
}

func (r *ladderRig) now() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.clock
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

func (r *ladderRig) sleepList() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sleeps)
}

var (
	resumeRefused  = attempt{Clean: false, Subscribed: true, QoS: 1, Refused: true}
	resumeGranted  = attempt{Clean: false, Subscribed: true, QoS: 1}
	discardSession = attempt{Clean: true}
	qos0Granted    = attempt{Clean: true, Subscribed: true, QoS: 0}
)

func TestSession_QoS1SubscribeAnsweredByAClosedConnectionEndsAtQoS0AndProbesBack(t *testing.T) {
	rig := startLadderRig(t, -1, mqtttest.Options{})
	st := rig.waitQoS(0)
	got := rig.ref.list()
	// The resumed session is retried while the closes last less than closeWindow: a broker's
	// hiccup must not cost the session.
	n := 0
	for n < len(got) && got[n].key() == resumeRefused {
		n++
	}
	if n < 3 || got[n-1].At.Sub(got[0].At) < closeWindow || got[n-2].At.Sub(got[0].At) >= closeWindow {
		t.Fatalf("%d closes of the resumed session before giving it up, over %v; want them to span just over %v: %v",
			n, got[max(n-1, 0)].At.Sub(got[0].At), closeWindow, got)
	}
	// Then the old session is discarded, the fresh one is refused as well, and QoS 0 is granted.
	if want := []attempt{discardSession, resumeRefused, qos0Granted}; !slices.Equal(keys(got[n:]), want) {
		t.Fatalf("attempts after the resumed session %v, want %v", got[n:], want)
	}
	if d := rig.probeDelays(); len(d) != 1 || d[0] < ProbeMin/2-2*time.Second || d[0] > ProbeMin {
		t.Errorf("probe delays %v, want one in [%v, %v] less a backoff", d, ProbeMin/2, ProbeMin)
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
	rig.fireProbe()
	before := len(got)
	got = rig.ref.waitFor("back at QoS 0 after a probe", func(as []attempt) bool {
		return len(as) >= before+3 && as[before+2].Subscribed
	})
	if want := []attempt{discardSession, resumeRefused, qos0Granted}; !slices.Equal(keys(got[before:]), want) {
		t.Fatalf("attempts of a refused probe %v, want %v", got[before:], want)
	}
	rig.waitQoS(0)
	if d := rig.probeDelays(); len(d) != 2 || d[1] < ProbeMin-2*time.Second || d[1] > 2*ProbeMin {
		t.Errorf("probe delays %v, want the second in [%v, %v] less a backoff", d, ProbeMin, 2*ProbeMin)
	}

	// Once the broker grants QoS 1 again, the probe starts a new persistent session at QoS 1.
	rig.ref.setRefuse(0)
	rig.fireProbe()
	before = len(got)
	got = rig.ref.waitFor("subscribed by the second probe", func(as []attempt) bool {
		return len(as) >= before+2 && as[before+1].Subscribed
	})
	if want := []attempt{discardSession, resumeGranted}; !slices.Equal(keys(got[before:]), want) {
		t.Fatalf("attempts of a granted probe %v, want %v", got[before:], want)
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

func TestSession_ConnectionsClosedBeforeTheSUBACKForAShortWhileKeepTheSession(t *testing.T) {
	rig := startLadderRig(t, 4, mqtttest.Options{})
	rig.waitQoS(1)
	want := []attempt{resumeRefused, resumeRefused, resumeRefused, resumeRefused, resumeGranted}
	got := rig.ref.list()
	if !slices.Equal(keys(got), want) {
		t.Fatalf("attempts %v, want %v: closes for %v (under %v) must not throw the session away",
			got, want, got[len(got)-1].At.Sub(got[0].At), closeWindow)
	}
	if d := rig.probeDelays(); len(d) != 0 {
		t.Errorf("probe scheduled at QoS 1: %v", d)
	}
}

func TestSession_ASubscriptionGrantedAtQoS0IsShownAsSuchWithoutProbes(t *testing.T) {
	rig := startLadderRig(t, 0, mqtttest.Options{Lines: []string{"max_qos 0"}})
	st := rig.waitQoS(0)
	if !st.QoS1RetryAt.IsZero() || len(rig.probeDelays()) != 0 {
		t.Errorf("a QoS 0 grant is the broker's setting, not a refusal to probe: %+v, probes %v", st, rig.probeDelays())
	}
	// mosquitto disconnects a 3.1.1 client that publishes above max_qos: the pull and the
	// confirmation go at QoS 0. The pull went out before the confirmation, on the same connection,
	// so once the confirmation is here the broker has taken both.
	server := rig.broker.Client(t)
	confirms := server.Subscribe(t, cmx.StatusTopic(cmx.PushTopic(rig.prefix, 0)), 1)
	server.Publish(t, cmx.PushTopic(rig.prefix, 0), 0, []byte(`{"id":"p1","entries":[1]}`)) // the server too
	if m := confirms.Next(t, 20*time.Second); string(m.Payload) != `{"id":"p1","status":"ok"}` || m.QoS != 0 {
		t.Errorf("confirmation %v, want {\"id\":\"p1\",\"status\":\"ok\"} at QoS 0", m)
	}
	if got := rig.ref.published(); len(got) < 2 || slices.Max(got) != 0 {
		t.Errorf("the agent published at QoS %v, want the pull and the confirmation, all at QoS 0", got)
	}
	if got, want := keys(rig.ref.list()), []attempt{resumeGranted}; !slices.Equal(got, want) {
		t.Errorf("attempts %v, want %v", got, want)
	}
}

func TestSession_AnAnswerWaitingAtConnectGoesAtTheQoSTheBrokerGrants(t *testing.T) {
	rig := newLadderRig(t, 0, mqtttest.Options{Lines: []string{"max_qos 0"}})
	// A push taken before the connection (as from the session's last connection) leaves a QoS 1
	// confirmation in the outbox.
	push := cmx.PushTopic(rig.prefix, 0)
	r := rig.eng.Deliver(engine.Message{Topic: push, QoS: 1, Payload: []byte(`{"id":"p0","entries":[0]}`)})
	select {
	case <-r.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the push was not taken")
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	server := rig.broker.Client(t)
	confirms := server.Subscribe(t, cmx.StatusTopic(push), 1)
	pulls := server.Subscribe(t, cmx.PullTopic(rig.prefix), 1)
	rig.run()
	if m := confirms.Next(t, 20*time.Second); string(m.Payload) != `{"id":"p0","status":"ok"}` || m.QoS != 0 {
		t.Errorf("confirmation %v, want {\"id\":\"p0\",\"status\":\"ok\"} at QoS 0", m)
	}
	// The pull is queued at the SUBACK, after the confirmation: once the broker passed it on, it
	// has taken everything before it on this connection.
	pulls.Next(t, 20*time.Second)
	// Sent before the SUBACK told the QoS, the confirmation would have cost the connection.
	if got, want := keys(rig.ref.list()), []attempt{resumeGranted}; !slices.Equal(got, want) {
		t.Errorf("attempts %v, want %v", got, want)
	}
	if got := rig.ref.published(); len(got) < 2 || slices.Max(got) != 0 {
		t.Errorf("the agent published at QoS %v, want the confirmation and the pull, all at QoS 0", got)
	}
	if st := rig.s.State(); st.Connects != 1 || !st.Connected {
		t.Errorf("status %+v, want connected once", st)
	}
}

func TestSession_TopicsRefusedWhileOthersAreGrantedLeaveTheOthersWorking(t *testing.T) {
	prefix := cmx.Prefix("v1", "cmx", "gw-1")
	denied := cmx.PushFilters(prefix)[1] // P/json/+: pushes with a request id
	rig := startLadderRig(t, 0, mqtttest.Options{}, denied)
	st := rig.waitQoS(1)
	if !slices.Equal(st.RefusedFilters, []string{denied}) {
		t.Errorf("refused filters in status %q, want [%s]", st.RefusedFilters, denied)
	}
	server := rig.broker.Client(t)
	confirms := server.Subscribe(t, cmx.StatusTopic(cmx.PushTopic(prefix, 0)), 1)
	server.Publish(t, cmx.PushTopic(prefix, 0), 1, []byte(`{"id":"p1","entries":[1]}`))
	if m := confirms.Next(t, 10*time.Second); string(m.Payload) != `{"id":"p1","status":"ok"}` || m.QoS != 1 {
		t.Errorf("confirmation %v, want {\"id\":\"p1\",\"status\":\"ok\"} at QoS 1", m)
	}
	// An ACL's refusal of some topics is not the session's: no reconnect, no other rung.
	if got, want := keys(rig.ref.list()), []attempt{resumeGranted}; !slices.Equal(got, want) {
		t.Errorf("attempts %v, want %v", got, want)
	}
	if st := rig.s.State(); st.Connects != 1 {
		t.Errorf("%d connections, want 1", st.Connects)
	}
}

func TestSession_ABrokerRefusingEverythingIsRetriedWithAGrowingBackoff(t *testing.T) {
	prefix := cmx.Prefix("v1", "cmx", "gw-1")
	rig := startLadderRig(t, 0, mqtttest.Options{}, cmx.PushFilters(prefix)...)
	refusedAll := attempt{Clean: false, Subscribed: true, QoS: 1}
	freshAll := refusedAll
	qos0All := attempt{Clean: true, Subscribed: true, QoS: 0}
	want := []attempt{refusedAll, discardSession, freshAll, qos0All, refusedAll, discardSession, freshAll, qos0All}
	got := rig.ref.waitFor("round the ladder twice", func(as []attempt) bool { return len(as) >= len(want) && as[len(want)-1].Subscribed })
	if !slices.Equal(keys(got[:len(want)]), want) {
		t.Fatalf("attempts %v, want %v", got, want)
	}
	// The first descent is quick; once even QoS 0 was refused, every attempt waits longer than the
	// one before, up to the policy's 60 s: the ladder does not spin round at 1 s.
	sl := rig.sleepList()
	pol := NewReconnectPolicy(0)
	for i := 2; i < len(sl) && i < 7; i++ {
		lower := min(pol.Min<<(i-1), pol.Max) / 2 // the policy's Delay(i) is drawn from [d/2, d]
		if sl[i] < lower {
			t.Errorf("wait %d = %v, want at least %v: %v", i+1, sl[i], lower, sl)
		}
	}
	if st := rig.s.State(); st.Connected || !strings.HasPrefix(st.LastError, "the broker refused the subscription to "+prefix) {
		t.Errorf("status %+v, want not connected, and the refusal as the last error", st)
	}
}

func TestLadder_Rungs(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		ev string        // "0x80", "closed", "granted", "interrupted", "probe"
		at time.Duration // since t0
	}
	type want struct {
		discard, clean bool
		qos            byte
	}
	tests := []struct {
		name       string
		persistent bool
		steps      []step
		want       want
	}{
		{"starts on the configured persistent session", true, nil, want{false, false, 1}},
		{"starts on the configured clean session", false, nil, want{false, true, 1}},
		{"SUBACK 0x80 discards the session at once", true, []step{{"0x80", 0}}, want{true, false, 1}},
		{"closes for less than the window keep the session", true, []step{{"closed", 0}, {"closed", 14 * time.Second}}, want{false, false, 1}},
		{"closes for the window discard it", true, []step{{"closed", 0}, {"closed", 5 * time.Second}, {"closed", 15 * time.Second}}, want{true, false, 1}},
		{"two closes over the window keep it", true, []step{{"closed", 0}, {"closed", time.Minute}}, want{false, false, 1}},
		{"a granted SUBSCRIBE between closes restarts the window", true,
			[]step{{"closed", 0}, {"granted", time.Second}, {"closed", 10 * time.Second}, {"closed", 20 * time.Second}}, want{false, false, 1}},
		{"a failed connection between closes restarts the window", true,
			[]step{{"closed", 0}, {"interrupted", time.Second}, {"closed", 10 * time.Second}, {"closed", 20 * time.Second}}, want{false, false, 1}},
		{"a fresh session once subscribed is resumed", true, []step{{"0x80", 0}, {"granted", 0}}, want{false, false, 1}},
		{"one close of a fresh session goes to QoS 0", true, []step{{"0x80", 0}, {"closed", 0}}, want{false, true, 0}},
		{"with a clean session configured there is no fresh rung", false, []step{{"closed", 0}, {"closed", 5 * time.Second}, {"closed", 15 * time.Second}}, want{false, true, 0}},
		{"at QoS 0 a close is a fault, not a refusal", true, []step{{"0x80", 0}, {"0x80", 0}, {"closed", time.Second}}, want{false, true, 0}},
		{"at QoS 0 a SUBACK 0x80 starts over", true, []step{{"0x80", 0}, {"0x80", 0}, {"0x80", time.Second}}, want{false, false, 1}},
		{"the probe timer makes the next connection a fresh session", true, []step{{"0x80", 0}, {"0x80", 0}, {"granted", 0}, {"probe", time.Second}}, want{true, false, 1}},
		{"a reconnect after the probe time is the probe", true, []step{{"0x80", 0}, {"0x80", 0}, {"granted", 0}, {"", ProbeMin}}, want{true, false, 1}},
		{"a reconnect before the probe time stays at QoS 0", true, []step{{"0x80", 0}, {"0x80", 0}, {"granted", 0}, {"", ProbeMin/2 - time.Second}}, want{false, true, 0}},
		{"a refused probe goes back to QoS 0", true, []step{{"0x80", 0}, {"0x80", 0}, {"probe", 0}, {"closed", 0}}, want{false, true, 0}},
		{"the probe timer at QoS 1 does nothing", true, []step{{"probe", 0}}, want{false, false, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := ladder{persistent: tt.persistent}
			r := seeded(3)
			now := t0
			for _, st := range tt.steps {
				now = t0.Add(st.at)
				switch st.ev {
				case "0x80":
					l.refused(false, now, r)
				case "closed":
					l.refused(true, now, r)
				case "granted":
					l.subscribed()
				case "interrupted":
					l.interrupted()
				case "probe":
					l.probeNow()
				}
			}
			discard, clean, qos := l.plan(now)
			if got := (want{discard, clean, qos}); got != tt.want {
				t.Errorf("next connection: discard %v clean %v qos %d, want discard %v clean %v qos %d",
					got.discard, got.clean, got.qos, tt.want.discard, tt.want.clean, tt.want.qos)
			}
		})
	}
}

func TestLadder_ARefusedProbeDoublesTheNextWaitAndAGrantedOneResetsIt(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := seeded(4)
	l := ladder{persistent: true}
	l.refused(false, t0, r) // resume refused: fresh
	l.refused(false, t0, r) // fresh refused: QoS 0
	for i, d := range []time.Duration{ProbeMin, 2 * ProbeMin, 4 * ProbeMin, 8 * ProbeMin, 16 * ProbeMin, ProbeMax, ProbeMax} {
		if wait := l.probeAt.Sub(t0); wait < d/2 || wait > d {
			t.Fatalf("after %d refused probes: wait %v, want in [%v, %v]", i, wait, d/2, d)
		}
		l.probeNow()
		l.refused(true, t0, r)
	}
	l.probeNow()
	l.subscribed()
	if l.probes != 0 || l.step != rungResume || !l.probeAt.IsZero() {
		t.Errorf("after a granted probe: %+v, want resume with no probes counted", l)
	}
}

func TestSession_AnAnswerWhosePublishEndsTheConnectionIsSetAsideAndTheOthersFlow(t *testing.T) {
	rig := newLadderRigFor(t, []string{"gw-1", "gw-2"}, 0, mqtttest.Options{})
	bad, good := cmx.Prefix("v1", "cmx", "gw-1"), cmx.Prefix("v1", "cmx", "gw-2")
	badAnswer := cmx.StatusTopic(cmx.PushTopic(bad, 0))
	rig.ref.denyPublish(badAnswer)
	server := rig.broker.Client(t)
	confirms := server.Subscribe(t, cmx.StatusTopic(cmx.PushTopic(good, 0)), 1)
	rig.run()
	rig.waitQoS(1)

	// gw-1's confirmation can never be acknowledged: each publish of it costs the connection.
	server.Publish(t, cmx.PushTopic(bad, 0), 1, []byte(`{"id":"b1","entries":[1]}`))
	rig.ref.waitFor("the bad answer's publish refused", func([]attempt) bool { return rig.ref.publishCloses() >= 1 })
	server.Publish(t, cmx.PushTopic(good, 0), 1, []byte(`{"id":"g1","entries":[1]}`))
	if m := confirms.Next(t, 20*time.Second); string(m.Payload) != `{"id":"g1","status":"ok"}` {
		t.Errorf("gw-2's confirmation %v, want {\"id\":\"g1\",\"status\":\"ok\"}", m)
	}
	rig.waitQoS(1)
	// Another push to gw-2 on the same connection, so that nothing is still on its way.
	server.Publish(t, cmx.PushTopic(good, 0), 1, []byte(`{"id":"g2","entries":[2]}`))
	confirms.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return string(m.Payload) == `{"id":"g2","status":"ok"}` })
	if n := rig.ref.publishCloses(); n != engine.PoisonCloses {
		t.Errorf("the bad answer cost %d connections, want %d", n, engine.PoisonCloses)
	}
	// The push's PUBACK waited for its commit (held path): cut off before it, the push came again
	// and may have been answered twice, with the same answer.
	// g2's PUBACK reaches the agent after the server has the confirmation; no event tells an
	// acknowledgement: poll.
	var waiting []engine.OutMsg
	testkit.Eventually(t, 10*time.Second, func() bool {
		waiting = rig.eng.Outbox().Waiting()
		return !slices.ContainsFunc(waiting, func(m engine.OutMsg) bool { return m.Topic != badAnswer })
	}, "the outbox holds more than gw-1's confirmation: %s", func() string { return fmt.Sprint(waiting) })
	for _, m := range waiting {
		if m.Topic != badAnswer || string(m.Payload) != `{"id":"b1","status":"ok"}` {
			t.Errorf("outbox holds %s %s, want only gw-1's confirmation", m.Topic, m.Payload)
		}
	}
	st, err := rig.eng.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if len(waiting) == 0 || st.OutboxSetAside != len(waiting) {
		t.Errorf("stats: %d answers set aside, outbox holds %d; want gw-1's confirmation kept and set aside", st.OutboxSetAside, len(waiting))
	}
	if got := rig.logs.list(); !slices.Equal(got, []string{badAnswer}) {
		t.Errorf("logged as set aside: %q, want %s once", got, badAnswer)
	}
}
