package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

const (
	app     = "app-v1"
	waitFor = 10 * time.Second
)

// harness runs one in-process agent against a real mosquitto and watches everything on kp1/# from a
// separate client, as the server would.
type harness struct {
	t      *testing.T
	broker *mqtttest.Broker
	dir    string
	cfg    *config.Config
	server *mqtttest.Client
	all    *mqtttest.Sub // kp1/# at QoS 2, so each message shows the QoS it was published with
	pause  func(string)
	// onChange, when set before start, becomes Options.OnChange.
	onChange func()
	// pullTimeout, when set before start, becomes Options.PullTimeout.
	pullTimeout time.Duration
	// connLimits, when set before start, replace the limits of the API socket and the metrics
	// listener.
	connLimits *connLimits

	agent  *Agent
	cancel context.CancelFunc
	done   chan error
	logs   *testkit.Buffer
}

func newHarness(t *testing.T, tokens ...string) *harness {
	t.Helper()
	if len(tokens) == 0 {
		tokens = []string{"gw-001"}
	}
	var eps strings.Builder
	for _, tok := range tokens {
		fmt.Fprintf(&eps, "[[endpoint]]\ntoken = %q\noutput = \"out/%s.json\"\n", tok, tok)
	}
	return newHarnessConfig(t, config.DialectCMX3, eps.String())
}

// newHarnessConfig is newHarness with a dialect and the [[endpoint]] tables written out.
func newHarnessConfig(t *testing.T, dialect, endpoints string) *harness {
	t.Helper()
	return newHarnessBroker(t, mqtttest.Options{}, dialect, endpoints)
}

// newHarnessBroker is newHarnessConfig on a broker started with opts.
func newHarnessBroker(t *testing.T, opts mqtttest.Options, dialect, endpoints string) *harness {
	t.Helper()
	b := mqtttest.StartWith(t, opts)
	dir := t.TempDir()
	var sb strings.Builder
	fmt.Fprintf(&sb, "[broker]\nservers = [%q]\nkeepalive = \"5s\"\nreconnect_spread = \"0s\"\n[kaa]\napp_version = %q\ndialect = %q\n[agent]\nstate_dir = \"state\"\nsocket = \"state/agent.sock\"\nmax_payload = \"64KiB\"\n", b.URL, app, dialect)
	sb.WriteString(endpoints)
	cfg, err := config.Parse(filepath.Join(dir, "agent.toml"), []byte(sb.String()))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	h := &harness{t: t, broker: b, dir: dir, cfg: cfg}
	// A clean session: a persistent one has mosquitto send a message in flight at a restart again
	// (its PUBLISH saved before the acknowledgement came), which reads as a second pull with the
	// same id. The test client reconnects every 100 ms and the agent after 0.5 s or more, so it is
	// subscribed again before the agent publishes.
	h.server = b.Client(t)
	h.all = h.server.Subscribe(t, "kp1/#", 2)
	t.Cleanup(h.stop)
	return h
}

func (h *harness) output(token string) string { return filepath.Join(h.dir, "out", token+".json") }

func (h *harness) prefix(token string) string { return "kp1/" + app + "/cmx/" + token }

func (h *harness) start() {
	h.t.Helper()
	h.logs = &testkit.Buffer{}
	a, err := New(h.cfg, Options{Options: engine.Options{
		Logger:      slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Pause:       h.pause,
		OnChange:    h.onChange,
		PullTimeout: h.pullTimeout,
	}})
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	if h.connLimits != nil {
		a.apiLimits, a.metricsLimits = *h.connLimits, *h.connLimits
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.agent, h.cancel, h.done = a, cancel, make(chan error, 1)
	go func() { h.done <- a.Run(ctx) }()
}

func (h *harness) stop() {
	if h.agent == nil {
		return
	}
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		h.t.Errorf("agent did not stop within 5s")
	}
	h.agent.Close()
	h.agent = nil
	if h.t.Failed() {
		h.t.Logf("agent log:\n%s", h.logs.String())
	}
}

// pulled waits for the agent's next pull request for token and returns its id.
func (h *harness) pulled(token string) uint64 {
	h.t.Helper()
	m := h.all.NextMatching(h.t, waitFor, func(m mqtttest.Message) bool { return m.Topic == h.prefix(token)+"/pull/json" })
	if m.QoS != 1 {
		h.t.Errorf("pull QoS = %d, want 1", m.QoS)
	}
	var p struct {
		ID *uint64 `json:"id"`
	}
	if err := json.Unmarshal(m.Payload, &p); err != nil || p.ID == nil || *p.ID == 0 {
		h.t.Fatalf("pull payload %s: want {\"id\": positive integer}", m.Payload)
	}
	return *p.ID
}

// confirmed waits for the confirmation published at topic.
func (h *harness) confirmed(topic string) (mqtttest.Message, map[string]json.RawMessage) {
	h.t.Helper()
	m := h.all.NextMatching(h.t, waitFor, func(m mqtttest.Message) bool { return m.Topic == topic })
	var c map[string]json.RawMessage
	if err := json.Unmarshal(m.Payload, &c); err != nil {
		h.t.Fatalf("confirmation %s is not a JSON object: %v", m.Payload, err)
	}
	return m, c
}

func (h *harness) waitFile(path string, want []byte) {
	h.t.Helper()
	testkit.WaitFile(h.t, path, want, waitFor)
}

// waitLog waits until n lines of the agent's log hold substr. An outcome is logged after its
// commit, and the sender may publish the answer from that commit before the line is written, so
// a line is waited for even after its answer came.
func (h *harness) waitLog(substr string, n int) {
	h.t.Helper()
	h.logs.WaitN(h.t, substr, n, 20*time.Second)
}

// waitCounters waits until the engine's counters of endpoint key satisfy ok, and returns them.
// The counters follow an outcome's commit, which may come after its answer was published.
func (h *harness) waitCounters(key string, ok func(engine.EndpointStats) bool) engine.EndpointStats {
	h.t.Helper()
	var (
		ep  engine.EndpointStats
		err error
	)
	testkit.Eventually(h.t, waitFor, func() bool {
		var st engine.Stats
		if st, err = h.agent.eng.Stats(); err != nil {
			return false
		}
		for _, e := range st.Endpoints {
			if e.Key == key {
				ep = e
				return ok(e)
			}
		}
		return false
	}, "counters of %s never as wanted: last %s", key, func() string { return fmt.Sprintf("%+v (err %v)", ep, err) })
	return ep
}

func status(t *testing.T, c map[string]json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(c["status"], &s); err != nil {
		t.Fatalf("status %s: %v", c["status"], err)
	}
	return s
}

func TestBoot_PullsAfterSubscribing(t *testing.T) {
	h := newHarness(t)
	h.start()
	id := h.pulled("gw-001")
	// The answer to the pull is published only now; on a first connect the broker keeps nothing for
	// the agent, so it arrives only if the subscription was in place before the pull went out.
	h.server.Publish(t, h.prefix("gw-001")+"/json", 1, []byte(`{"id":1,"entries":[{"boot":true}]}`))
	h.waitFile(h.output("gw-001"), []byte(`[{"boot":true}]`))
	if id != 1 {
		t.Errorf("first pull id = %d, want 1", id)
	}
}

func TestPush_WritesFileAndConfirms(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.pulled("gw-001")
	cases := []struct {
		name    string
		topic   string
		qos     byte
		payload string
		body    string
		id      string // JSON of the expected id; "" = no id key
	}{
		{"number id qos1", "/json", 1, `{"id":42,"entries":[{"key":"value"},15,["an","array",13]]}`, `[{"key":"value"},15,["an","array",13]]`, `42`},
		{"string id qos1", "/json", 1, `{"id":"cfg-7","entries":[1]}`, `[1]`, `"cfg-7"`},
		{"no id qos1", "/json", 1, `{"entries":[ 15 ]}`, `[ 15 ]`, ``},
		{"number id qos0", "/json", 0, `{"id":43,"entries":[0]}`, `[0]`, `43`},
		{"request id in topic", "/json/77", 1, `{"id":"r","entries":[true]}`, `[true]`, `"r"`},
		{"request id qos0", "/json/78", 0, `{"entries":[null]}`, `[null]`, ``},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			topic := h.prefix("gw-001") + tc.topic
			h.server.Publish(t, topic, tc.qos, []byte(tc.payload))
			m, c := h.confirmed(topic + "/status")
			if m.QoS != tc.qos {
				t.Errorf("confirmation QoS = %d, want %d (the push's)", m.QoS, tc.qos)
			}
			if got := status(t, c); got != "ok" {
				t.Errorf("status = %q, want ok", got)
			}
			if tc.id == "" {
				if _, ok := c["id"]; ok {
					t.Errorf("confirmation %s has an id, want none", m.Payload)
				}
			} else if string(c["id"]) != tc.id {
				t.Errorf("confirmation id = %s, want %s", c["id"], tc.id)
			}
			got, err := os.ReadFile(h.output("gw-001"))
			if err != nil || string(got) != tc.body {
				t.Errorf("file = %q (%v), want %q", got, err, tc.body)
			}
		})
	}
}

func TestPush_BadInputGetsErrorStatusAndChangesNothing(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.pulled("gw-001")
	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(t, topic, 1, []byte(`{"id":1,"entries":["good"]}`))
	h.confirmed(topic + "/status")
	good := []byte(`["good"]`)
	h.waitFile(h.output("gw-001"), good)

	cases := []struct {
		name    string
		payload []byte
		status  string
		id      string
	}{
		{"not JSON", []byte(`{"id":2,"entries":[`), "invalid payload: not JSON", ""},
		{"not an object", []byte(`[1,2]`), "invalid payload: payload must be a JSON object, got array", ""},
		{"entries missing", []byte(`{"id":3}`), "invalid payload: entries missing", "3"},
		{"entries not an array", []byte(`{"id":4,"entries":{"a":1}}`), "invalid payload: entries must be an array, got object", "4"},
		{"id of a wrong type", []byte(`{"id":[5],"entries":[]}`), "invalid payload: id must be a string or a number, got array", ""},
		// The id comes before the cut, so the refusal names it.
		{"oversized", append(append([]byte(`{"id":6,"entries":["`), bytes.Repeat([]byte("x"), 70<<10)...), `"]}`...), "invalid payload: payload too large: 71703 bytes, limit 65536", "6"},
		// Far beyond the limit: the transport keeps only the beginning while reading the socket;
		// the push is acknowledged (not delivered again in a loop) and refused with its id.
		{"oversized far beyond what is read", append(append([]byte(`{"id":"big","entries":["`), bytes.Repeat([]byte("x"), 4<<20)...), `"]}`...), "invalid payload: payload too large: 4194331 bytes, limit 65536", `"big"`},
		{"id after the cut", append(append([]byte(`{"entries":["`), bytes.Repeat([]byte("x"), 4<<20)...), `"], "id": 9}`...), "invalid payload: payload too large: 4194329 bytes, limit 65536", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.server.Publish(t, topic, 1, tc.payload)
			m, c := h.confirmed(topic + "/status")
			if got := status(t, c); !strings.HasPrefix(got, tc.status) {
				t.Errorf("status = %q, want prefix %q", got, tc.status)
			}
			if string(c["id"]) != tc.id {
				t.Errorf("id = %s, want %q (payload %s)", c["id"], tc.id, m.Payload)
			}
			got, _ := os.ReadFile(h.output("gw-001"))
			if !bytes.Equal(got, good) {
				t.Errorf("file changed to %q", got)
			}
		})
	}
	// One refusal counted per bad push, and nothing else.
	ep := h.waitCounters("gw-001", func(e engine.EndpointStats) bool { return e.Rejected >= uint64(len(cases)) })
	if ep.Ok != 1 || ep.Rejected != uint64(len(cases)) || ep.Superseded+ep.Failed != 0 {
		t.Errorf("counters %+v, want 1 applied and %d rejected (one per bad push), nothing else", ep, len(cases))
	}
}

func TestBrokerRestart_PullsAgainWithNewID(t *testing.T) {
	h := newHarness(t)
	h.start()
	first := h.pulled("gw-001")
	h.broker.Restart(t)
	second := h.pulled("gw-001")
	if second <= first {
		t.Errorf("pull id after reconnect = %d, want > %d", second, first)
	}
	// The session survived: a push after the reconnect is applied and confirmed.
	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(t, topic, 1, []byte(`{"id":"after","entries":[2]}`))
	_, c := h.confirmed(topic + "/status")
	if status(t, c) != "ok" {
		t.Errorf("status after reconnect = %v", c)
	}
}

func TestRestart_KeepsIDCounter(t *testing.T) {
	h := newHarness(t)
	h.start()
	first := h.pulled("gw-001")
	h.stop()
	h.start()
	second := h.pulled("gw-001")
	// Ids are leased in blocks, so the one after a restart is past the lease, not the next number.
	if second <= first {
		t.Errorf("pull id after restart = %d, want more than %d", second, first)
	}
}

func TestPushWhileAgentDown_IsAppliedAfterRestart(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.pulled("gw-001")
	h.stop()
	topic := h.prefix("gw-001") + "/json/5"
	h.server.Publish(t, topic, 1, []byte(`{"id":"offline","entries":["queued"]}`))
	h.start()
	m, c := h.confirmed(topic + "/status")
	if status(t, c) != "ok" || m.QoS != 1 {
		t.Errorf("confirmation %s qos %d", m.Payload, m.QoS)
	}
	h.waitFile(h.output("gw-001"), []byte(`["queued"]`))
}

func TestEndpoints_AreIndependent(t *testing.T) {
	h := newHarness(t, "dev-a", "dev-b")
	h.start()
	h.pulled("dev-a")
	for _, tok := range []string{"dev-a", "dev-b"} {
		h.server.Publish(t, h.prefix(tok)+"/json", 1, []byte(`{"id":1,"entries":["`+tok+`"]}`))
	}
	got := map[string]string{}
	for range 2 {
		m := h.all.NextMatching(t, waitFor, func(m mqtttest.Message) bool { return strings.HasSuffix(m.Topic, "/json/status") })
		got[m.Topic] = string(m.Payload)
	}
	for _, tok := range []string{"dev-a", "dev-b"} {
		h.waitFile(h.output(tok), []byte(`["`+tok+`"]`))
		if c := got[h.prefix(tok)+"/json/status"]; c != `{"id":1,"status":"ok"}` {
			t.Errorf("%s confirmation = %q", tok, c)
		}
	}
}

func TestOutbox_ConfirmationMadeWhileBrokerDownIsSentAfterReconnect(t *testing.T) {
	h := newHarness(t)
	blocked := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	h.pause = func(step string) {
		if step == StepRenamed {
			once.Do(func() {
				close(blocked)
				<-release
			})
		}
	}
	h.start()
	h.pulled("gw-001")
	topic := h.prefix("gw-001") + "/json/12"
	h.server.Publish(t, topic, 1, []byte(`{"id":"outage","entries":["x"]}`))
	<-blocked
	h.broker.Stop(t)
	close(release) // the confirmation is committed to the outbox while no broker is there
	h.broker.Start(t)
	m, c := h.confirmed(topic + "/status")
	if status(t, c) != "ok" || string(c["id"]) != `"outage"` || m.QoS != 1 {
		t.Errorf("confirmation after outage = %s (QoS %d)", m.Payload, m.QoS)
	}
}

// clientID is the MQTT client id the agent uses: the configured one, or the one it derives from the
// first endpoint's token and keeps.
func (h *harness) clientID() string {
	if h.cfg.Broker.ClientID != "" {
		return h.cfg.Broker.ClientID
	}
	return config.DefaultClientPrefix + h.cfg.Endpoints[0].Token
}

func TestPush_ASlowHookDoesNotHoldUpPushesToOtherEndpoints(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "go")
	// One message in flight per client: the broker sends the next push only once the last is
	// acknowledged, as every broker does once its window (mosquitto 20, RabbitMQ 10) is full.
	h := newHarnessBroker(t, mqtttest.Options{Lines: []string{"max_inflight_messages 1"}}, config.DialectCMX3, fmt.Sprintf(
		"[[endpoint]]\ntoken = \"gw-001\"\noutput = \"out/gw-001.json\"\nhook = [\"sh\", \"-c\", 'while [ ! -e \"$0\" ]; do sleep 0.01; done', %q]\n"+
			"[[endpoint]]\ntoken = \"gw-002\"\noutput = \"out/gw-002.json\"\n", gate))
	h.start()
	h.pulled("gw-001")
	h.pulled("gw-002")
	h.server.Publish(t, h.prefix("gw-001")+"/json", 1, []byte(`{"id":"a1","entries":[1]}`))
	h.server.Publish(t, h.prefix("gw-002")+"/json", 1, []byte(`{"id":"b1","entries":[2]}`))
	// gw-001's hook is still waiting: its push was acknowledged once stored, so the next one came.
	if _, c := h.confirmed(h.prefix("gw-002") + "/json/status"); string(c["id"]) != `"b1"` || string(c["status"]) != `"ok"` {
		t.Errorf("gw-002 confirmation %v, want b1 ok", c)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, c := h.confirmed(h.prefix("gw-001") + "/json/status"); string(c["id"]) != `"a1"` || string(c["status"]) != `"ok"` {
		t.Errorf("gw-001 confirmation %v, want a1 ok", c)
	}
}
