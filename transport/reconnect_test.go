package transport

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

func seeded(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed)) }

func TestReconnectPolicy_AfterALostConnectionTheFirstAttemptIsUniformOverTheSpread(t *testing.T) {
	const spread, n = 30 * time.Second, 100_000
	p := NewReconnectPolicy(spread)
	r := seeded(1)
	var deciles [10]int
	for range n {
		d := p.Delay(0, r)
		if d < 0 || d >= spread {
			t.Fatalf("delay %v outside [0, %v)", d, spread)
		}
		deciles[d*10/spread]++
	}
	// Each tenth of the window gets a tenth of the fleet: 10,000 ± 95 (1 σ); 5 σ is 475.
	for i, c := range deciles {
		if c < n/10-500 || c > n/10+500 {
			t.Errorf("tenth %d of the spread holds %d of %d delays, want about %d: %v", i, c, n, n/10, deciles)
		}
	}
}

func TestReconnectPolicy_RefusedAttemptsDoubleFromMinToMaxWithJitter(t *testing.T) {
	p := NewReconnectPolicy(30 * time.Second)
	r := seeded(2)
	for n, d := range []time.Duration{1: 1 * time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
		16 * time.Second, 32 * time.Second, 60 * time.Second, 60 * time.Second, 60 * time.Second} {
		if n == 0 {
			continue
		}
		lo, hi := time.Duration(1<<62), time.Duration(0)
		for range 2000 {
			got := p.Delay(n, r)
			lo, hi = min(lo, got), max(hi, got)
		}
		// [d/2, d], and the jitter uses the whole of it.
		if lo < d/2 || hi > d || lo > d/2+d/50 || hi < d-d/50 {
			t.Errorf("refusal %d: delays in [%v, %v], want spread over [%v, %v]", n, lo, hi, d/2, d)
		}
	}
	if got := p.Delay(1<<30, r); got < ReconnectMax/2 || got > ReconnectMax {
		t.Errorf("after very many refusals: %v, want within [%v, %v]", got, ReconnectMax/2, ReconnectMax)
	}
}

func TestReconnectPolicy_WithoutSpreadALostConnectionWaitsLikeTheFirstRefusal(t *testing.T) {
	p := NewReconnectPolicy(0)
	r := seeded(3)
	for range 1000 {
		if d := p.Delay(0, r); d < ReconnectMin/2 || d > ReconnectMin {
			t.Fatalf("delay %v, want within [%v, %v] (the backoff's first step)", d, ReconnectMin/2, ReconnectMin)
		}
	}
}

func TestReconnectPolicy_TheSameSeedGivesTheSameDelays(t *testing.T) {
	p := NewReconnectPolicy(time.Minute)
	a, b := seeded(4), seeded(4)
	for i := range 100 {
		if x, y := p.Delay(i%8, a), p.Delay(i%8, b); x != y {
			t.Fatalf("draw %d: %v and %v from the same seed", i, x, y)
		}
	}
}

// delays is a clock that records the session's waits instead of waiting them (each takes a real
// 5 ms, so that a refusing loop does not spin), and ends the run after stopAfter.
type delays struct {
	clock.Real
	mu        sync.Mutex
	got       []time.Duration
	stopAfter int
	cancel    context.CancelFunc
	first     chan struct{}
	once      sync.Once
}

func (d *delays) NewTimer(dur time.Duration) clock.Timer {
	d.mu.Lock()
	d.got = append(d.got, dur)
	n := len(d.got)
	d.mu.Unlock()
	d.once.Do(func() { close(d.first) })
	if n >= d.stopAfter {
		d.cancel()
	}
	return d.Real.NewTimer(5 * time.Millisecond)
}

func (d *delays) list() []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Duration(nil), d.got...)
}

func TestRun_RefusedAttemptsWaitThePolicysBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: every attempt is refused
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := &delays{stopAfter: 5, cancel: cancel, first: make(chan struct{})}
	cfg := config.Broker{Servers: []string{"tcp://" + addr}, Keepalive: config.Duration{Duration: 5 * time.Second},
		ReconnectSpread: config.Duration{Duration: 30 * time.Second}}
	s := New(cfg, nil, Options{Rand: seeded(5), Clock: rec})
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	want := NewReconnectPolicy(30 * time.Second)
	r := seeded(5)
	got := rec.list()
	if len(got) != 5 {
		t.Fatalf("%d waits, want 5: %v", len(got), got)
	}
	for i, d := range got {
		if w := want.Delay(i+1, r); d != w {
			t.Errorf("wait %d = %v, want %v (the policy's delay after %d refusals): %v", i+1, d, w, i+1, got)
		}
	}
}

func TestRun_ALostConnectionWaitsARandomPartOfTheSpread(t *testing.T) {
	b := mqtttest.Start(t)
	const spread = 45 * time.Second
	cfg, _ := oneEndpointConfig(t, b.URL, spread)
	eng, err := engine.New(cfg, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec := &delays{stopAfter: 1, cancel: cancel, first: make(chan struct{})}
	connected := make(chan struct{}, 1)
	s := New(cfg.Broker, eng, Options{ClientID: "cmx-agent-test", Rand: seeded(6), Clock: rec, OnChange: func() {
		select {
		case connected <- struct{}{}:
		default:
		}
	}})
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	for !s.State().Connected {
		select {
		case <-connected:
		case <-ctx.Done():
			t.Fatal("never connected")
		}
	}
	b.Stop(t)
	// Not ctx: the recorded wait cancels it.
	select {
	case <-rec.first:
	case <-time.After(20 * time.Second):
		t.Fatal("the lost connection was never noticed")
	}
	<-done
	got := rec.list()
	if w := NewReconnectPolicy(spread).Delay(0, seeded(6)); len(got) != 1 || got[0] != w {
		t.Errorf("waits %v, want [%v]: the policy's first draw for a lost connection", got, w)
	}
	if got[0] >= spread {
		t.Errorf("wait %v, want within [0, %v)", got[0], spread)
	}
}

// oneEndpointConfig loads a configuration with server, reconnect_spread and one endpoint gw-1,
// whose output path it returns, all in a temporary folder.
func oneEndpointConfig(t *testing.T, server string, spread time.Duration) (*config.Config, string) {
	t.Helper()
	return endpointsConfig(t, server, spread, "gw-1")
}

// endpointsConfig is oneEndpointConfig with an endpoint per token; it returns the first one's output.
func endpointsConfig(t *testing.T, server string, spread time.Duration, tokens ...string) (*config.Config, string) {
	t.Helper()
	dir := t.TempDir()
	src := fmt.Sprintf("[broker]\nservers = [%q]\nreconnect_spread = %q\n[kaa]\napp_version = \"v1\"\n[agent]\nstate_dir = %q\nsocket = %q\n",
		server, spread, filepath.Join(dir, "state"), filepath.Join(dir, "state", "agent.sock"))
	for _, tok := range tokens {
		src += fmt.Sprintf("[[endpoint]]\ntoken = %q\noutput = %q\n", tok, filepath.Join(dir, "out", tok+".json"))
	}
	path := filepath.Join(dir, "agent.toml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, filepath.Join(dir, "out", tokens[0]+".json")
}

// setAsideLog is a slog handler that keeps the topic of each record saying an answer was set
// aside.
type setAsideLog struct {
	mu     *sync.Mutex
	topics *[]string
}

func newSetAsideLog() setAsideLog { return setAsideLog{mu: &sync.Mutex{}, topics: new([]string)} }

func (h setAsideLog) Enabled(context.Context, slog.Level) bool { return true }
func (h setAsideLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h setAsideLog) WithGroup(string) slog.Handler            { return h }

func (h setAsideLog) Handle(_ context.Context, r slog.Record) error {
	if !strings.Contains(r.Message, "set aside") {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "topic" {
			h.mu.Lock()
			*h.topics = append(*h.topics, a.Value.String())
			h.mu.Unlock()
		}
		return true
	})
	return nil
}

func (h setAsideLog) list() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.topics)
}
