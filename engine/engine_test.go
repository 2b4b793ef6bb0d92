package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/internal/clock/clocktest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/store"
)

const testWait = 10 * time.Second

// core runs an engine with an in-memory transport: messages go in through Deliver, what the engine
// sends is read from its outbox and acknowledged at once, as a broker would.
type core struct {
	t   testing.TB
	e   *Engine
	dir string
	gen uint64
	// sent collects what the transport published, in order.
	sent   chan OutMsg
	cancel context.CancelFunc
	done   chan struct{}
	// logs holds what the engine logged (debug level and up), across restarts.
	logs *testkit.Buffer
	cfg  *config.Config
	opt  coreOptions
	// reconnects counts the connections after the first of this run (reconnect).
	reconnects uint64
}

// coreOptions are what startCoreWith sets besides the endpoints; the zero value is startCore's.
type coreOptions struct {
	Dialect     string // default cmx3
	Pause       func(string)
	MaxPayload  config.Size   // default 64 KiB
	FailCommit  func() error  // the engine's failCommit
	PullTimeout time.Duration // Options.PullTimeout; default the engine's
	HoldBound   time.Duration // Options.HoldBound; default an hour (no bound in practice)
	// Unsent: no transport runs, so the answers stay in the outbox for the test to read.
	Unsent bool
	Trust  config.Trust // [trust]; none by default
	// Clock is Options.Clock; default the real one. A test that waits out backoffs or debounces
	// passes a clocktest.Clock and advances it.
	Clock clock.Clock
}

// warp returns a clock that runs 50 times faster than real time for as long as the test lasts, for
// a test that would otherwise wait out backoffs, debounces or timeouts one after another. Call it
// before startCoreWith, so that the engine stops before the clock does.
func warp(t testing.TB) *clocktest.Clock {
	clk := clocktest.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	clk.Drive(t, 50*time.Millisecond)
	return clk
}

// pass waits until d has passed on the engine's clock.
func (c *core) pass(d time.Duration) {
	c.t.Helper()
	clk := clock.OrReal(c.opt.Clock)
	until := clk.Now().Add(d)
	testkit.Eventually(c.t, testWait, func() bool { return !clk.Now().Before(until) }, "%v did not pass on the engine's clock", d)
}

func startCore(t testing.TB, dialect string, pause func(string), eps ...config.Endpoint) *core {
	t.Helper()
	return startCoreWith(t, coreOptions{Dialect: dialect, Pause: pause}, eps...)
}

// startCoreWith is startCore with every option; endpoints keep all their fields (hook, validate,
// template, mode, on_drift…), and an empty output becomes out/<key>.json in the test's folder.
func startCoreWith(t testing.TB, o coreOptions, eps ...config.Endpoint) *core {
	t.Helper()
	if o.Dialect == "" {
		o.Dialect = config.DialectCMX3
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = 1 << 16
	}
	if o.HoldBound == 0 {
		// Tests count commits and hold receipts on purpose; on a slow machine (qemu, a loaded CI)
		// a quick apply can pass 500 ms and be stored at the bound. The bound's own tests set it.
		o.HoldBound = time.Hour
	}
	dir := t.TempDir()
	for i := range eps {
		if eps[i].Output == "" {
			eps[i].Output = filepath.Join(dir, "out", eps[i].Key()+".json")
		}
	}
	cfg := &config.Config{
		Kaa:       config.Kaa{AppVersion: "app", Extension: "cmx", Dialect: o.Dialect},
		Agent:     config.Agent{StateDir: filepath.Join(dir, "state"), MaxPayload: o.MaxPayload},
		Trust:     o.Trust,
		Endpoints: eps,
	}
	c := &core{t: t, dir: dir, sent: make(chan OutMsg, 1000), logs: &testkit.Buffer{}, cfg: cfg, opt: o}
	c.run()
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("engine log:\n%s", c.logs.String())
		}
	})
	return c
}

// run opens the engine on c's state and runs it, online on a new connection generation.
func (c *core) run() {
	c.t.Helper()
	logger := slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e, err := New(c.cfg, Options{Pause: c.opt.Pause, Logger: logger, PullTimeout: c.opt.PullTimeout, HoldBound: c.opt.HoldBound, Clock: c.opt.Clock})
	if err != nil {
		c.t.Fatal(err)
	}
	e.failCommit = c.opt.FailCommit
	ctx, cancel := context.WithCancel(context.Background())
	c.gen++
	c.reconnects = 0
	c.e, c.cancel = e, cancel
	run, pumped := make(chan struct{}), make(chan struct{})
	go func() { e.Run(ctx); close(run) }()
	if c.opt.Unsent {
		close(pumped)
		c.done = make(chan struct{})
		go func() { <-run; close(c.done) }()
		return
	}
	go func() { c.pump(ctx, e); close(pumped) }()
	c.done = make(chan struct{})
	go func() { <-run; <-pumped; close(c.done) }()
	e.Online(c.gen, true)
}

// reconnect tells the engine its connection ended and a new one is up, as after the transport ended
// a connection on a failed receipt: the broker then sends the unacknowledged messages again. The
// new generation's requests are not pumped (the pump reads c.gen).
func (c *core) reconnect() {
	c.t.Helper()
	c.reconnects++
	c.e.Offline(c.liveGen())
	c.e.Online(c.gen<<16+c.reconnects, true)
}

// liveGen is the generation the engine takes messages on.
func (c *core) liveGen() uint64 {
	if c.reconnects == 0 {
		return c.gen
	}
	return c.gen<<16 + c.reconnects
}

// stop ends Run and the transport and closes the engine; restart runs it again on the same state.
func (c *core) stop() {
	if c.e == nil {
		return
	}
	c.cancel()
	<-c.done
	c.e.Close()
	c.e = nil
}

func (c *core) restart() {
	c.t.Helper()
	c.stop()
	c.run()
}

// pump is the transport's sender: every visible message is "published" and acknowledged.
func (c *core) pump(ctx context.Context, e *Engine) {
	for {
		for _, m := range e.Outbox().Next(c.gen, 100) {
			e.Outbox().Sent(m.Seq)
			e.Outbox().Acked(m.Seq)
			select {
			case c.sent <- m:
			case <-ctx.Done(): // nobody reads what is sent any more: stopping must not wait for it
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-e.Outbox().Wake():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// next returns the next published message on a topic ending with suffix.
func (c *core) next(suffix string) OutMsg {
	c.t.Helper()
	deadline := time.After(testWait)
	for {
		select {
		case m := <-c.sent:
			if strings.HasSuffix(m.Topic, suffix) {
				return m
			}
		case <-deadline:
			c.t.Fatalf("nothing published on *%s within %s", suffix, testWait)
		}
	}
}

func (c *core) deliver(topic string, qos byte, payload string) *Receipt {
	return c.e.Deliver(Message{Topic: topic, QoS: qos, Payload: []byte(payload)})
}

func (c *core) waitFile(path, want string) {
	c.t.Helper()
	testkit.WaitFile(c.t, path, []byte(want), testWait)
}

// released reports whether r has been released.
func released(r *Receipt) bool {
	select {
	case <-r.Done():
		return true
	default:
		return false
	}
}

func waitReceipt(t *testing.T, r *Receipt) {
	t.Helper()
	select {
	case <-r.Done():
		if r.Err() != nil {
			t.Fatalf("receipt: %v", r.Err())
		}
	case <-time.After(testWait):
		t.Fatal("receipt not released")
	}
}

const p = "kp1/app/cmx/gw"

// confirmation is a published 3/CMX confirmation, parsed.
type confirmation struct {
	Topic  string
	QoS    byte
	ID     string // the id as JSON text; "" when the confirmation has none
	Status string
	raw    []byte
}

// confirmed returns the next message published at topic, parsed as a confirmation.
func (c *core) confirmed(topic string) confirmation {
	c.t.Helper()
	deadline := time.After(testWait)
	for {
		select {
		case m := <-c.sent:
			if m.Topic != topic {
				continue
			}
			var body struct {
				ID     json.RawMessage `json:"id"`
				Status *string         `json:"status"`
			}
			if err := json.Unmarshal(m.Payload, &body); err != nil || body.Status == nil {
				c.t.Fatalf("confirmation at %s is %q: want {\"id\"?, \"status\"} (%v)", topic, m.Payload, err)
			}
			return confirmation{Topic: m.Topic, QoS: m.QoS, ID: string(body.ID), Status: *body.Status, raw: m.Payload}
		case <-deadline:
			c.t.Fatalf("nothing published at %s within %s", topic, testWait)
		}
	}
}

// send delivers m, waits until its receipt is released and returns its confirmation (published at
// the push's topic + "/status").
func (c *core) send(m Message) confirmation {
	c.t.Helper()
	r := c.e.Deliver(m)
	conf := c.confirmed(m.Topic + "/status")
	select {
	case <-r.Done():
		if r.Err() != nil {
			c.t.Fatalf("receipt of the push at %s: %v", m.Topic, r.Err())
		}
	case <-time.After(testWait):
		c.t.Fatalf("receipt of the push at %s not released", m.Topic)
	}
	return conf
}

// push sends {"id": id, "entries": entries} at P/json with QoS 1 and returns its confirmation,
// checking that it carries the id (JSON text; "" for none).
func (c *core) push(id, entries string) confirmation {
	c.t.Helper()
	payload := `{"entries":` + entries + `}`
	if id != "" {
		payload = `{"id":` + id + `,"entries":` + entries + `}`
	}
	conf := c.send(Message{Topic: p + "/json", QoS: 1, Payload: []byte(payload)})
	if conf.ID != id {
		c.t.Fatalf("confirmation %s, want it for id %s", conf.raw, id)
	}
	return conf
}

// output is the output file of the endpoint with key.
func (c *core) output(key string) string {
	for _, ep := range c.cfg.Endpoints {
		if ep.Key() == key {
			return ep.Output
		}
	}
	c.t.Fatalf("no endpoint %s", key)
	return ""
}

// waitLog waits until the engine's log holds s at least n times and returns the count then.
// waitLog waits until n lines of the engine's log hold s, and returns how many do.
func (c *core) waitLog(s string, n int) int {
	c.t.Helper()
	c.logs.WaitN(c.t, s, n, testWait)
	return c.logs.Count(s)
}

// script writes an executable shell script into dir and returns its path.
func script(t testing.TB, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// readLines returns the words of the file at path (none when it does not exist).
func readLines(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// holdFirstWrite returns a pause function that holds the first apply once its file is written under
// the temporary name, until release is closed; blocked receives when it holds.
func holdFirstWrite() (blocked chan struct{}, release chan struct{}, pause func(string)) {
	return holdFirst(StepSynced)
}

// holdFirst blocks the first time the engine reaches step, until release is closed.
func holdFirst(step string) (blocked chan struct{}, release chan struct{}, pause func(string)) {
	blocked, release = make(chan struct{}, 1), make(chan struct{})
	return blocked, release, func(s string) {
		if s == step {
			select {
			case blocked <- struct{}{}:
				<-release
			default:
			}
		}
	}
}

func TestPush_SameIDOnAnotherTopicIsConfirmedOnEach(t *testing.T) {
	t.Parallel()
	blocked, release, pause := holdFirstWrite()
	c := startCore(t, config.DialectCMX3, pause, config.Endpoint{Token: "gw"})
	r1 := c.deliver(p+"/json", 1, `{"id": 7, "entries": [1]}`)
	<-blocked // 7 is being written
	// The same push comes again as the answer to a pull.
	r2 := c.deliver(p+"/json/42", 1, `{"id": 7, "entries": [1]}`)
	close(release)
	waitReceipt(t, r1)
	waitReceipt(t, r2)
	got := map[string]string{}
	for range 2 {
		m := c.next("/status")
		got[m.Topic] = string(m.Payload)
	}
	for _, topic := range []string{p + "/json/status", p + "/json/42/status"} {
		if got[topic] != `{"id":7,"status":"ok"}` {
			t.Errorf("%s got %q, want the confirmation of 7", topic, got[topic])
		}
	}
}

func TestReceipt_HeldUntilTheResultIsCommitted(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c := startCore(t, config.DialectCMX3, func(step string) {
		if step == StepRenamed {
			<-release
		}
	}, config.Endpoint{Token: "gw"})
	r := c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)
	select {
	case <-r.Done():
		t.Fatal("a held push was released before its result was committed")
	case <-time.After(50 * time.Millisecond): // proves absence: the file is not even in place yet
	}
	close(release)
	waitReceipt(t, r)
	st := c.e.stateOf(c.e.endpointList()[0])
	if st.AppliedText != "1" || st.LastCode != store.CodeOK {
		t.Errorf("state after release = %+v, want 1 applied", st)
	}
}

func TestReload_ChangedOutputAppliesTheStoredConfigurationAtOnce(t *testing.T) {
	t.Parallel()
	c := startCore(t, config.DialectCMX3, nil, config.Endpoint{Token: "gw"})
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 1, "entries": [{"k": 1}]}`))
	c.next("/json/status")
	moved := filepath.Join(c.dir, "elsewhere", "gw.json")
	c.e.Reload([]config.Endpoint{{Token: "gw", Output: moved}})
	c.waitFile(moved, `[{"k": 1}]`)
	// A new id with the same bytes is now unchanged: the file is there.
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 2, "entries": [{"k": 1}]}`))
	if m := c.next("/json/status"); string(m.Payload) != `{"id":2,"status":"ok"}` {
		t.Errorf("confirmation %s", m.Payload)
	}
}

func TestCMP7_ServerGoingBackToTheOneBeingWrittenEndsOnIt(t *testing.T) {
	t.Parallel()
	blocked, release, pause := holdFirstWrite()
	c := startCore(t, config.DialectCMP7, pause, config.Endpoint{Token: "gw"})
	out := c.e.endpointList()[0].config().Output
	c.deliver(p+"/config/json/status", 1, `{"configId": "z", "config": ["z"]}`)
	<-blocked
	c.deliver(p+"/config/json/status", 1, `{"configId": "b", "config": ["b"]}`)
	r := c.deliver(p+"/config/json/status", 1, `{"configId": "z", "config": ["z"]}`)
	close(release)
	waitReceipt(t, r)
	c.waitFile(out, `["z"]`)
	st := c.e.stateOf(c.e.endpointList()[0])
	if st.AppliedText != "z" {
		t.Errorf("applied %q, want z (the server's last word)", st.AppliedText)
	}
}

func TestCMP7_TransientFailureIsRetriedAndARefusalIsNot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The output's folder is a file: the write fails (500) until it is a folder.
	c := startCore(t, config.DialectCMP7, nil, config.Endpoint{Token: "gw", Output: filepath.Join(blocker, "gw.json")})
	report := func() (int, string) {
		code, id, _ := c.appliedReport()
		return code, id
	}
	c.deliver(p+"/config/json/status", 1, `{"configId": "c1", "config": [1]}`)
	if code, _ := report(); code != 500 {
		t.Fatalf("first report %d, want 500", code)
	}
	os.Remove(blocker)
	c.deliver(p+"/config/json/status", 1, `{"configId": "c1", "config": [1]}`)
	if code, id := report(); code != 200 || id != "c1" {
		t.Errorf("report after the cause went: %d %s, want c1 applied", code, id)
	}
	c.waitFile(filepath.Join(blocker, "gw.json"), `[1]`)
}

func TestReload_RemovingAnEndpointBeforeRunDoesNotWait(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, config.DialectCMX3, config.Endpoint{Token: "a"}, config.Endpoint{Token: "b"})
	done := make(chan struct{})
	go func() {
		e.Reload([]config.Endpoint{{Token: "a", Output: e.endpointList()[0].config().Output}})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(testWait):
		t.Fatal("Reload before Run blocked on an endpoint that never started")
	}
}

func TestResultCommitFailure_RetriesTheCommitAndNoDriftRepairFightsIt(t *testing.T) {
	t.Parallel()
	logs := &testkit.Buffer{}
	dir := t.TempDir()
	out := filepath.Join(dir, "out", "gw.json")
	cfg := &config.Config{
		Kaa:       config.Kaa{AppVersion: "app", Extension: "cmx", Dialect: config.DialectCMX3},
		Agent:     config.Agent{StateDir: filepath.Join(dir, "state"), MaxPayload: 1 << 16},
		Endpoints: []config.Endpoint{{Token: "gw", Output: out, OnDrift: config.OnDriftRepair}},
	}
	e, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), Clock: warp(t)})
	if err != nil {
		t.Fatal(err)
	}
	var failing atomic.Int32
	e.failCommit = func() error {
		if failing.Load() > 0 {
			failing.Add(-1)
			return errors.New("no space left on device")
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; e.Close() })
	e.Online(1, true)
	c := &core{t: t, e: e}
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`))
	c.waitFile(out, `[1]`)

	failing.Store(2)
	r := c.deliver(p+"/json", 1, `{"id": 2, "entries": [2]}`)
	c.waitFile(out, `[2]`)
	// The output's folder saw the agent's own write: a drift check is due while the result is not
	// committed yet.
	e.endpointList()[0].post(evDrift{})
	waitReceipt(t, r)
	c.waitFile(out, `[2]`)
	if n := e.endpointList()[0].stats.driftRepairs.Load(); n != 0 {
		t.Errorf("%d drift repairs ran against the uncommitted result:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "cannot record the result; retrying"); n != 2 {
		t.Errorf("commit retried after %d failures, want 2", n)
	}
	if st := e.stateOf(e.endpointList()[0]); st.AppliedText != "2" {
		t.Errorf("applied %q, want 2", st.AppliedText)
	}
}

func TestClientID_TheFirstOneUsedIsKept(t *testing.T) {
	t.Parallel()
	e := newTestEngine(t, config.DialectCMX3, config.Endpoint{Token: "a"})
	first, err := e.ClientID("cmx-agent-a")
	if err != nil {
		t.Fatal(err)
	}
	// The endpoint list changed (a removed, b first): the derived id would change, the kept one not.
	again, err := e.ClientID("cmx-agent-b")
	if err != nil || first != "cmx-agent-a" || again != first {
		t.Errorf("client ids %q then %q (%v), want cmx-agent-a both times", first, again, err)
	}
}

func TestReload_RemovedEndpointReleasesWhatItWillNotApply(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		at   string // where push 1 is when the endpoint is removed
		qos  byte   // of push 2: 1 takes the held path, 0 the committed one (a pending record)
	}{
		{"push 2 waits behind the apply in progress, held", StepSynced, 1},
		{"push 2 waits behind the apply in progress, committed", StepSynced, 0},
		// Then push 2 comes to an idle endpoint that is stopping: it must not start either.
		{"push 2 arrives as the result of 1 is committed, held", StepCommitted, 1},
		{"push 2 arrives as the result of 1 is committed, committed", StepCommitted, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blocked, release, pause := holdFirst(tt.at)
			c := startCore(t, config.DialectCMX3, pause, config.Endpoint{Token: "gw"}, config.Endpoint{Token: "other"})
			r1 := c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)
			<-blocked
			r2 := c.deliver(p+"/json", tt.qos, `{"id": 2, "entries": [2]}`)
			if tt.at == StepSynced && tt.qos == 0 {
				waitReceipt(t, r2) // stored before the removal: its record is what shutdown deletes
			}
			var gw *endpoint
			var other config.Endpoint
			for _, ep := range c.e.endpointList() {
				switch ep.key {
				case "gw":
					gw = ep
				case "other":
					other = ep.config()
				}
			}
			done := make(chan struct{})
			go func() {
				c.e.Reload([]config.Endpoint{other})
				close(done)
			}()
			// The removal must come while 1 is still in hand: then 1 is the apply in progress.
			testkit.Eventually(t, testWait, gw.removed, "Reload did not stop the endpoint")
			close(release)
			select {
			case <-done:
			case <-time.After(testWait):
				t.Fatal("Reload did not return after the apply in progress")
			}
			// Both receipts are released, so the PUBACKs behind them are not held up; push 2 is
			// not applied.
			waitReceipt(t, r1)
			waitReceipt(t, r2)
			out, _ := os.ReadFile(filepath.Join(c.dir, "out", "gw.json"))
			if string(out) != "[1]" {
				t.Errorf("output %q, want [1]: a push that comes after the removal is not applied", out)
			}
			// Nor is it kept to be applied should the endpoint be added again.
			var left []*store.Offer
			if err := c.e.store.View(func(tx *store.Tx) error {
				var err error
				left, err = tx.Pending("gw")
				return err
			}); err != nil || len(left) != 0 {
				t.Errorf("pending offers of the removed endpoint %v (%v), want none", left, err)
			}
		})
	}
}

func TestState_ACorruptStateRecordIsReplacedByTheNextResult(t *testing.T) {
	t.Parallel()
	c := startCore(t, config.DialectCMX3, nil, config.Endpoint{Token: "gw"})
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`))
	c.next("/status")
	// bbolt's pages check out at open; the record inside one does not decode.
	c.stop()
	st, err := store.OpenStore(filepath.Join(c.dir, "state"), time.Second, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(func(tx *store.Tx) error { return tx.PutRaw("gw", store.RecordState, 0, []byte(`{"applied_id":`)) }); err != nil {
		t.Fatal(err)
	}
	st.Close()
	c.run()
	// The endpoint works on as one with nothing applied: the next push is applied and its result
	// replaces the record, which reads again.
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 2, "entries": [2]}`))
	if m := c.next("/status"); string(m.Payload) != `{"id":2,"status":"ok"}` {
		t.Errorf("confirmation %s, want 2 ok", m.Payload)
	}
	c.waitFile(filepath.Join(c.dir, "out", "gw.json"), "[2]")
	eps, err := c.e.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || eps[0].AppliedID != "2" {
		t.Errorf("endpoints %+v, want 2 applied", eps)
	}
	if !strings.Contains(c.logs.String(), "cannot read endpoint state") {
		t.Error("the unreadable record was not logged")
	}
}

func TestPush_CommittedPathReleasesTheReceiptOnceStoredNotOnceApplied(t *testing.T) {
	t.Parallel()
	gate := filepath.Join(t.TempDir(), "go")
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw",
		Hook: []string{"sh", "-c", `while [ ! -e "$0" ]; do sleep 0.01; done`, gate}})
	// An endpoint with a hook takes the committed path: the PUBACK must not wait for the hook, or
	// it holds every PUBACK behind it and, once the broker's in-flight window is full, every push.
	r := c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)
	waitReceipt(t, r) // the hook is still waiting for the gate
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if m := c.next("/status"); string(m.Payload) != `{"id":1,"status":"ok"}` {
		t.Errorf("confirmation %s, want 1 ok", m.Payload)
	}
}

// failingCommits is a failCommit that lets skip commits pass, then fails the next n.
type failingCommits struct{ skip, n atomic.Int32 }

func (f *failingCommits) fail() error {
	if f.skip.Load() > 0 {
		f.skip.Add(-1)
		return nil
	}
	if f.n.Load() > 0 {
		f.n.Add(-1)
		return errors.New("no space left on device")
	}
	return nil
}

// pendingOf lists the pending offers the database holds for endpoint key.
func (c *core) pendingOf(key string) []*store.Offer {
	c.t.Helper()
	return readStore(c, func(tx *store.Tx) ([]*store.Offer, error) { return tx.Pending(key) })
}

// readStore returns what read finds in the engine's database, failing the test on an error.
func readStore[T any](c *core, read func(*store.Tx) (T, error)) T {
	c.t.Helper()
	var out T
	if err := c.e.store.View(func(tx *store.Tx) error {
		var err error
		out, err = read(tx)
		return err
	}); err != nil {
		c.t.Fatal(err)
	}
	return out
}

// confirmations collects n published confirmations as topic → payload.
func (c *core) confirmations(n int) map[string]string {
	c.t.Helper()
	got := map[string]string{}
	for range n {
		m := c.next("/status")
		got[m.Topic] = string(m.Payload)
	}
	return got
}

func TestResultCommitFailure_ARepeatMeanwhileIsAnsweredWithTheResult(t *testing.T) {
	t.Parallel()
	for _, qos := range []byte{1, 0} { // the repeat on the held path, then on the committed one
		t.Run(fmt.Sprintf("repeat at QoS %d", qos), func(t *testing.T) {
			var f failingCommits
			// A manual clock: the commit is retried only once the repeat has arrived.
			clk := clocktest.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			c := startCoreWith(t, coreOptions{FailCommit: f.fail, Clock: clk}, config.Endpoint{Token: "gw"})
			f.n.Store(1) // the result commit of push 1 (held: it has no receive commit)
			r1 := c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)
			c.waitLog("cannot record the result; retrying", 1)
			// The same push again, as the answer to a pull, while the result waits for its commit.
			r2 := c.deliver(p+"/json/42", qos, `{"id": 1, "entries": [1]}`)
			gw := c.e.eps["gw"]
			testkit.Eventually(t, testWait, func() bool { return gw.stats.received.Load() == 2 }, "the repeat did not arrive")
			clk.AdvanceUntil(t, testWait, 100*time.Millisecond, func() bool { return released(r1) && released(r2) })
			waitReceipt(t, r1)
			waitReceipt(t, r2)
			if n := c.logs.Count("duplicate id confirmed again"); n != 0 {
				t.Errorf("the repeat was answered as a handled id after the commit, not as a repeat of the result waiting for it")
			}
			want := map[string]string{p + "/json/status": `{"id":1,"status":"ok"}`, p + "/json/42/status": `{"id":1,"status":"ok"}`}
			if got := c.confirmations(2); !maps.Equal(got, want) {
				t.Errorf("confirmations %v, want %v", got, want)
			}
			if left := c.pendingOf("gw"); len(left) != 0 {
				t.Errorf("pending offers %v after the result was committed, want none", left)
			}
		})
	}
}

func TestReceiveCommitFailure_TheNewerOfferIsNotLostAndTheOlderNotRevived(t *testing.T) {
	t.Parallel()
	var f failingCommits
	blocked, release, pause := holdFirst(StepSynced)
	c := startCoreWith(t, coreOptions{FailCommit: f.fail, Pause: pause}, config.Endpoint{Token: "gw"})
	r1 := c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)
	<-blocked                                                            // 1 is being written
	waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 2, "entries": [2]}`)) // stored, waits behind 1
	f.n.Store(1)
	r3 := c.deliver(p+"/json", 0, `{"id": 3, "entries": [3]}`) // supersedes 2; its commit fails
	<-r3.Done()
	if r3.Err() == nil {
		t.Fatal("push 3 was acknowledged although its commit failed")
	}
	// Nothing more is taken on that connection: the transport ends it, and the broker sends 3
	// again on the next, unacknowledged; it joins the offer waiting in its place.
	if r := c.deliver(p+"/json", 0, `{"id": 4, "entries": [4]}`); r.Err() == nil {
		<-r.Done()
		if r.Err() == nil {
			t.Fatal("push 4 was taken on the connection where 3 could not be stored")
		}
	}
	c.reconnect()
	waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 3, "entries": [3]}`))
	close(release)
	waitReceipt(t, r1)
	c.waitFile(filepath.Join(c.dir, "out", "gw.json"), "[3]")
	// Each push is answered once: 2 as superseded by 3 (the repeat of 3 came on the same topic).
	var got []string
	for range 3 {
		got = append(got, string(c.next("/status").Payload))
	}
	slices.Sort(got)
	if want := []string{`{"id":1,"status":"ok"}`, `{"id":2,"status":"superseded by 3"}`, `{"id":3,"status":"ok"}`}; !slices.Equal(got, want) {
		t.Errorf("confirmations %q, want %q", got, want)
	}
	c.restart()
	if left := c.pendingOf("gw"); len(left) != 0 {
		t.Errorf("pending offers after the restart: %d (seq %d…), want none", len(left), left[0].Seq)
	}
	c.waitFile(filepath.Join(c.dir, "out", "gw.json"), "[3]")
}

func TestReceiveCommitFailure_APushToAnIdleEndpointIsNotAppliedLater(t *testing.T) {
	t.Parallel()
	var f failingCommits
	c := startCoreWith(t, coreOptions{FailCommit: f.fail}, config.Endpoint{Token: "gw"})
	f.n.Store(1)
	r1 := c.deliver(p+"/json", 0, `{"id": 1, "entries": [1]}`) // committed path: its commit fails
	<-r1.Done()
	if r1.Err() == nil {
		t.Fatal("push 1 was acknowledged although its commit failed")
	}
	c.reconnect()
	waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 2, "entries": [2]}`))
	out := filepath.Join(c.dir, "out", "gw.json")
	c.waitFile(out, "[2]")
	if m := c.next("/status"); string(m.Payload) != `{"id":2,"status":"ok"}` {
		t.Errorf("confirmation %s, want 2 ok", m.Payload)
	}
	// Push 1 was not applied, so no record of it may have gone in with 2's commits, to be applied
	// over 2 at the next start.
	c.restart()
	if left := c.pendingOf("gw"); len(left) != 0 {
		t.Errorf("%d pending offers after the restart, want none", len(left))
	}
	waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 3, "entries": [3]}`)) // recovery has run before it
	c.waitFile(out, "[3]")
}

func TestResultCommitFailure_ACMP7RepeatOfATransientFailureIsAppliedAgain(t *testing.T) {
	t.Parallel()
	marker := filepath.Join(t.TempDir(), "ran")
	var f failingCommits
	// The hook fails once (500, rolled back); the result commit fails too.
	c := startCoreWith(t, coreOptions{Dialect: config.DialectCMP7, FailCommit: f.fail, Clock: warp(t)}, config.Endpoint{Token: "gw",
		Hook: []string{"sh", "-c", `if [ -e "$0" ]; then exit 0; fi; touch "$0"; exit 1`, marker}})
	f.skip.Store(1) // the receive commit
	f.n.Store(1)    // the result commit
	c.deliver(p+"/config/json/status", 1, `{"configId": "c1", "config": [1]}`)
	c.waitLog("cannot record the result; retrying", 1)
	// The server sends c1 again (the answer to the pull after the reconnect the failure caused),
	// twice: the second joins the first, which waits to be applied again.
	c.deliver(p+"/config/json/status", 1, `{"configId": "c1", "config": [1]}`)
	c.deliver(p+"/config/json/status", 1, `{"configId": "c1", "config": [1]}`)
	reports := []int{}
	for len(reports) == 0 || reports[len(reports)-1] != 200 {
		m := c.next("")
		if !strings.Contains(m.Topic, "/applied/") {
			continue
		}
		var a struct {
			StatusCode int `json:"statusCode"`
		}
		if err := json.Unmarshal(m.Payload, &a); err != nil {
			t.Fatal(err)
		}
		reports = append(reports, a.StatusCode)
		if len(reports) > 3 {
			t.Fatalf("reports %v, want c1 applied after its transient failure", reports)
		}
	}
	c.waitFile(filepath.Join(c.dir, "out", "gw.json"), "[1]")
	if strings.Contains(c.logs.String(), "configuration superseded") {
		t.Errorf("c1 superseded by itself:\n%s", c.logs.String())
	}
}

func TestReload_APushWithTheAppliedIDDuringAReapplyIsConfirmedWithItsOutcome(t *testing.T) {
	t.Parallel()
	counter := filepath.Join(t.TempDir(), "runs")
	// The hook passes on its first run; the second (the re-apply the reload causes) waits for a gate.
	hook := []string{"sh", "-c", `n=$(cat "$0" 2>/dev/null || echo 0); echo $((n+1)) > "$0"; [ "$n" = 0 ] || while [ ! -e "$0.go" ]; do sleep 0.01; done`, counter}
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw", Hook: hook})
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`))
	if m := c.next("/status"); string(m.Payload) != `{"id":1,"status":"ok"}` {
		t.Fatalf("confirmation %s, want 1 ok", m.Payload)
	}
	ep := c.e.endpointList()[0].config()
	ep.Mode = 0o600 // a new shape: the stored configuration is applied again, by the agent itself
	c.e.Reload([]config.Endpoint{ep})
	testkit.Eventually(t, testWait, func() bool { // the re-apply's hook is running
		b, _ := os.ReadFile(counter)
		return strings.TrimSpace(string(b)) == "2"
	}, "the reload did not apply the configuration again")
	// The server sends 1 again: it is the handled id, confirmed with its outcome, not a repeat of
	// the agent's own re-apply (which answers nobody).
	r := c.deliver(p+"/json/7", 1, `{"id": 1, "entries": [1]}`)
	if m := c.next("/status"); m.Topic != p+"/json/7/status" || string(m.Payload) != `{"id":1,"status":"ok"}` {
		t.Errorf("confirmation %s on %s, want 1 ok on %s/json/7/status", m.Payload, m.Topic, p)
	}
	if err := os.WriteFile(counter+".go", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitReceipt(t, r)
}

func TestState_ADamagedPendingRecordDoesNotCostTheOthers(t *testing.T) {
	t.Parallel()
	gate := filepath.Join(t.TempDir(), "go")
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw",
		Hook: []string{"sh", "-c", `while [ ! -e "$0" ]; do sleep 0.01; done`, gate}})
	// Push 1 is stored (committed path) and being applied when the agent stops: it stays pending.
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`))
	c.stop()
	st, err := store.OpenStore(filepath.Join(c.dir, "state"), time.Second, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(func(tx *store.Tx) error {
		if left, err := tx.Pending("gw"); err != nil || len(left) != 1 {
			return fmt.Errorf("%d pending offers after the stop (%v), want 1", len(left), err)
		}
		return tx.PutRaw("gw", store.RecordPending, 1<<40, []byte(`{"seq":`))
	}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.run()
	c.waitFile(filepath.Join(c.dir, "out", "gw.json"), "[1]")
	if m := c.next("/status"); string(m.Payload) != `{"id":1,"status":"ok"}` {
		t.Errorf("confirmation %s, want 1 ok", m.Payload)
	}
	c.waitLog("unreadable pending configurations deleted", 1)
	// Nothing can apply the damaged record: it is gone, and the endpoint does not read as waiting.
	if left := c.pendingOf("gw"); len(left) != 0 {
		t.Errorf("%d pending offers left, want none", len(left))
	}
	eps, err := c.e.Endpoints()
	if err != nil || len(eps) != 1 || eps[0].Waiting || eps[0].Pending != 0 {
		t.Errorf("endpoints %+v (%v), want gw neither waiting nor pending", eps, err)
	}
}

func TestReceiveCommitFailure_WhatTheServerSaidIsNotRecordedOutOfTurn(t *testing.T) {
	t.Parallel()
	var f failingCommits
	c := startCoreWith(t, coreOptions{Dialect: config.DialectCMP7, FailCommit: f.fail}, config.Endpoint{Token: "gw"})
	server := func() ServerState {
		t.Helper()
		sts, err := c.e.ServerStates()
		if err != nil {
			t.Fatal(err)
		}
		return sts["gw"]
	}
	commitOf := func(r *Receipt) {
		t.Helper()
		<-r.Done()
		if r.Err() == nil {
			t.Fatal("acknowledged although its commit failed")
		}
	}
	// An error response whose commit fails, then a configuration: the error must not land after it.
	f.n.Store(1)
	commitOf(c.deliver(p+"/config/json/error", 1, `{"statusCode": 503, "reasonPhrase": "busy"}`))
	c.reconnect()
	waitReceipt(t, c.deliver(p+"/config/json/status", 1, `{"configId": "c1", "config": [1]}`))
	c.waitFile(filepath.Join(c.dir, "out", "gw.json"), "[1]")
	if st := server(); st.ErrorCode != 0 {
		t.Errorf("server state %+v after a configuration, want no error", st)
	}
	// "None assigned" is stored; a configuration whose receive commit fails (QoS 0: the committed
	// path) is not applied, and neither is its note; "none" again changes nothing, so the next
	// commit must not carry the dropped configuration's note.
	waitReceipt(t, c.deliver(p+"/config/json/status", 1, `{"configId": "", "config": null}`))
	f.n.Store(1)
	commitOf(c.deliver(p+"/config/json/status", 0, `{"configId": "c2", "config": [2]}`))
	c.reconnect()
	waitReceipt(t, c.deliver(p+"/config/json/status", 1, `{"configId": "", "config": null}`))
	waitReceipt(t, c.deliver(p+"/config/json/status", 1, `{"configId": "c3"}`)) // refused: committed
	if st := server(); !st.NoneAssigned {
		t.Errorf("server state %+v, want none assigned (the server's last word)", st)
	}
}

// While the state database refuses every commit, pushes that supersede one another behind the
// apply in progress must not pile up in memory: a superseded offer's uncommitted record is dropped
// from the journal with its body, so what the journal holds stays about one offer whatever the
// number of pushes (40 of 256 KiB here, 10 MiB in all).
// Not parallel: it measures the process's heap.
func TestReceiveCommitFailure_SupersededOffersDoNotPileUpInMemory(t *testing.T) {
	var f failingCommits
	blocked, release, pause := holdFirst(StepSynced)
	// Push 1 stays held while it is written (no hold bound here: it is not what is measured).
	c := startCoreWith(t, coreOptions{FailCommit: f.fail, Pause: pause, MaxPayload: 1 << 20, HoldBound: time.Hour}, config.Endpoint{Token: "gw"})
	r1 := c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)
	<-blocked // 1 is being written
	f.n.Store(1 << 30)
	big := func(i int) string {
		return fmt.Sprintf(`{"id": %d, "entries": ["%s"]}`, i, strings.Repeat(string(rune('a'+i%26)), 256<<10))
	}
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	const n = 40
	for i := 2; i < 2+n; i++ {
		c.reconnect() // after each failure the transport ends the connection
		r := c.deliver(p+"/json", 0, big(i))
		<-r.Done()
		if r.Err() == nil {
			t.Fatalf("push %d acknowledged although its commit failed", i)
		}
	}
	grown := int64(heap()) - int64(before)
	t.Logf("heap grew by %d KiB for %d pushes of 256 KiB while every commit failed", grown>>10, n)
	if grown > 3<<20 {
		t.Errorf("heap grew by %.1f MiB for %d superseded pushes of 256 KiB; want at most 3 MiB (about one offer)", float64(grown)/(1<<20), n)
	}
	f.n.Store(0)
	last := 2 + n - 1
	// The disk is back: the next commit (a refused push's) takes the journal along, and the newest
	// offer's record, which no deletion touched, is in the database before it is applied.
	c.reconnect()
	// Push 1, being written, went in the journal with the first of them (a stored offer is never
	// left behind a held one), so its receipt failed with that commit: the broker sends it again.
	waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 99, "entries": "not an array"}`))
	if left := c.pendingOf("gw"); len(left) != 2 || left[0].ID != "1" || left[1].ID != fmt.Sprint(last) || len(left[1].Body) < 256<<10 {
		t.Errorf("pending offers once commits work: %d, want 1 (being written) and the newest (%d), with its body", len(left), last)
	}
	<-r1.Done()
	if r1.Err() == nil {
		t.Error("push 1 acknowledged although the commit that stored it failed")
	}
	close(release)
	c.waitFile(filepath.Join(c.dir, "out", "gw.json"), `["`+strings.Repeat(string(rune('a'+last%26)), 256<<10)+`"]`)
	c.restart()
	if left := c.pendingOf("gw"); len(left) != 0 {
		t.Errorf("pending offers after the restart: %d, want none", len(left))
	}
}
