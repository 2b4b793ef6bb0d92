package cloud

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

const (
	testApp = "cloud-v1"
	waitFor = 10 * time.Second
)

// startAgent runs a real agent in-process for token against brokerURL; it returns the output path.
func startAgent(t *testing.T, brokerURL, token string) string {
	t.Helper()
	return startAgentWith(t, brokerURL, token, t.TempDir(), "")
}

// startAgentWith is startAgent in dir with extra TOML at the end of the configuration.
func startAgentWith(t *testing.T, brokerURL, token, dir, extra string) string {
	t.Helper()
	cfg, err := config.Parse(filepath.Join(dir, "agent.toml"), fmt.Appendf(nil, `[broker]
servers = [%q]
[kaa]
app_version = %q
[agent]
state_dir = "state"
socket = "state/agent.sock"
[[endpoint]]
token = %q
output = "out/%s.json"
%s`, brokerURL, testApp, token, token, extra))
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(cfg, agent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		a.Close()
	})
	return filepath.Join(dir, "out", token+".json")
}

func waitFile(t *testing.T, path, want string) {
	t.Helper()
	testkit.WaitFile(t, path, []byte(want), waitFor)
}

type served struct {
	out   *testkit.Buffer
	confs chan Confirmation
}

func startServe(t *testing.T, o ServeOptions) *served {
	t.Helper()
	s := &served{out: &testkit.Buffer{}, confs: make(chan Confirmation, 64)}
	o.Out = s.out
	o.OnConfirmation = func(c Confirmation) { s.confs <- c }
	o.Debounce = 50 * time.Millisecond
	ready := make(chan struct{})
	o.Ready = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, o) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(waitFor):
		t.Fatal("Serve not ready within 10s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

func (s *served) next(t *testing.T) Confirmation {
	t.Helper()
	select {
	case c := <-s.confs:
		return c
	case <-time.After(waitFor):
		t.Fatalf("no confirmation within 10s; output so far:\n%s", s.out.String())
		return Confirmation{}
	}
}

func TestServe_AnswersRequestPushesOnChangeAndPrintsConfirmations(t *testing.T) {
	b := mqtttest.Start(t)
	configs := t.TempDir()
	if err := os.WriteFile(filepath.Join(configs, "gw-001.json"), []byte(`[{"a":1}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, ServeOptions{Options: Options{Broker: b.URL, AppVersion: testApp}, Configs: configs})
	out := startAgent(t, b.URL, "gw-001")

	// The agent's boot request is answered with the file.
	waitFile(t, out, `[{"a":1}]`)
	c := s.next(t)
	if !c.OK() || c.Token != "gw-001" || !strings.HasPrefix(c.ID.Text(), "v") {
		t.Errorf("first confirmation %+v, want gw-001 ok with a version id", c)
	}

	// An atomic replacement (temp + rename) and an edit in place are both pushed.
	tmp := filepath.Join(configs, ".gw-001.json.tmp")
	if err := os.WriteFile(tmp, []byte(`[{"a":2}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(configs, "gw-001.json")); err != nil {
		t.Fatal(err)
	}
	waitFile(t, out, `[{"a":2}]`)
	c2 := s.next(t)
	if !c2.OK() || c2.ID.Key() == c.ID.Key() {
		t.Errorf("confirmation after change %+v, want ok with a new id", c2)
	}
	if err := os.WriteFile(filepath.Join(configs, "gw-001.json"), []byte(`[{"a":3}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFile(t, out, `[{"a":3}]`)
	s.next(t)

	// Not an array: nothing is pushed, the agent keeps its file.
	if err := os.WriteFile(filepath.Join(configs, "gw-001.json"), []byte(`{"a":4}`), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-s.confs:
		t.Errorf("confirmation %+v after an invalid file, want no push", c)
	case <-time.After(500 * time.Millisecond):
	}
	lines := strings.Split(strings.TrimSpace(s.out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], `confirmation gw-001 id="v`) || !strings.HasSuffix(lines[0], `status="ok"`) {
		t.Errorf("printed confirmations:\n%s\nwant 3 lines `confirmation gw-001 id=\"v...\" status=\"ok\"`", s.out.String())
	}
}

func TestServe_SharedGroupAnswersEachRequestOnce(t *testing.T) {
	b := mqtttest.Start(t)
	configs := t.TempDir()
	if err := os.WriteFile(filepath.Join(configs, "gw-001.json"), []byte(`[1]`), 0o644); err != nil {
		t.Fatal(err)
	}
	o := ServeOptions{Options: Options{Broker: b.URL, AppVersion: testApp}, Configs: configs, Share: "servers"}
	startServe(t, o)
	startServe(t, o)
	dev := b.Client(t)
	answers := dev.Subscribe(t, "kp1/"+testApp+"/cmx/gw-001/json/+", 1)
	for i := uint64(1); i <= 4; i++ {
		dev.Publish(t, "kp1/"+testApp+"/cmx/gw-001/pull/json", 1, cmx.PullRequest(i))
		m := answers.Next(t, waitFor)
		if m.Topic != cmx.PushTopic("kp1/"+testApp+"/cmx/gw-001", i) {
			t.Errorf("answer to request %d at %s", i, m.Topic)
		}
	}
	answers.None(t, 300*time.Millisecond)
}

func TestServe_ShareSplitsWorkOnTheEmbeddedBrokerAndSaysRabbitMQDoesNotSupportIt(t *testing.T) {
	b, err := StartBroker("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	configs := t.TempDir()
	if err := os.WriteFile(filepath.Join(configs, "gw-001.json"), []byte(`[1]`), 0o644); err != nil {
		t.Fatal(err)
	}
	dev := mqtttest.Dial(t, b.URL())
	answers := dev.Subscribe(t, "kp1/"+testApp+"/cmx/gw-001/json/+", 1)
	for i, share := range []string{"servers", ""} {
		var log testkit.Buffer
		startServe(t, ServeOptions{
			Options: Options{Broker: b.URL(), AppVersion: testApp, Logger: slog.New(slog.NewTextHandler(&log, nil))},
			Configs: configs, Share: share,
		})
		said := strings.Contains(log.String(), "RabbitMQ does not support $share")
		if said != (share != "") {
			t.Errorf("share %q: log says RabbitMQ does not support $share: %v, want %v\n%s", share, said, share != "", log.String())
		}
		if share != "" {
			// mochi delivers to a $share group: the request is answered.
			dev.Publish(t, "kp1/"+testApp+"/cmx/gw-001/pull/json", 1, cmx.PullRequest(uint64(i+1)))
			answers.Next(t, waitFor)
		}
	}
}

func TestPush_WaitsForTheAgentsConfirmation(t *testing.T) {
	b := mqtttest.Start(t)
	// A push to an agent that never connected is lost (the broker has no session for it yet), so
	// wait for its subscription, proven by its first request.
	pulls := b.Client(t).Subscribe(t, "kp1/"+testApp+"/cmx/gw-001/pull/json", 1)
	out := startAgent(t, b.URL, "gw-001")
	pulls.Next(t, waitFor)
	o := Options{Broker: b.URL, AppVersion: testApp}
	ctx := context.Background()
	id, _ := ParseID("42")
	c, err := Push(ctx, o, Target{Token: "gw-001"}, id, []byte(`[{"x":1}]`), waitFor)
	if err != nil || !c.OK() || string(c.ID.JSON()) != "42" {
		t.Fatalf("Push = %+v, %v; want ok for id 42", c, err)
	}
	waitFile(t, out, `[{"x":1}]`)

	sid, _ := ParseID("42x")
	c, err = PushRaw(ctx, o, Target{Token: "gw-001"}, sid, []byte(`{"id":"42x","entries":7}`), waitFor)
	if err != nil || c.OK() || !strings.HasPrefix(c.Status, "invalid payload") {
		t.Fatalf("PushRaw = %+v, %v; want an invalid payload status", c, err)
	}

	if _, err := Push(ctx, o, Target{Token: "gw-001"}, id, []byte(`{"not":"an array"}`), waitFor); err == nil {
		t.Errorf("Push of an object: no error, want 'must be a JSON array'")
	}
}

func TestPush_NoAgentTimesOut(t *testing.T) {
	b := mqtttest.Start(t)
	id, _ := ParseID("1")
	_, err := Push(context.Background(), Options{Broker: b.URL, AppVersion: testApp}, Target{Token: "nobody"}, id, []byte(`[]`), 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "no confirmation within 200ms") {
		t.Errorf("Push with no agent: %v, want no confirmation within 200ms", err)
	}
}

func TestEmbeddedBroker_CarriesTheWholeLoop(t *testing.T) {
	eb, err := StartBroker("127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer eb.Close()
	if !strings.HasPrefix(eb.Addr(), "127.0.0.1:") || strings.HasSuffix(eb.Addr(), ":0") {
		t.Fatalf("Addr = %q, want the real loopback port", eb.Addr())
	}
	configs := t.TempDir()
	if err := os.WriteFile(filepath.Join(configs, "gw-9.json"), []byte(`["boot"]`), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, ServeOptions{Options: Options{Broker: eb.URL(), AppVersion: testApp}, Configs: configs})
	out := startAgent(t, eb.URL(), "gw-9")
	waitFile(t, out, `["boot"]`)
	if c := s.next(t); !c.OK() {
		t.Errorf("confirmation %+v, want ok", c)
	}
}

// demoWalkThrough is what every demo shows before it ends or keeps running.
var demoWalkThrough = []string{
	`now holds: [{"sampling_ms": 500}, {"unit": "C"}]`,
	`now holds: [{"sampling_ms": 250}, {"unit": "C"}]`,
	`confirmation gw-001 id=42 status="ok"`,
	`confirmation gw-001 id=43 status="invalid payload: entries must be an array, got object"`,
}

func TestDemo_ShowsFileConfirmationAndWhatToTryWhileItRuns(t *testing.T) {
	var out testkit.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	done, stopped := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(stopped)
		done <- Demo(ctx, DemoOptions{Out: &out, Dir: dir, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped // before dir goes
	})
	var (
		returned bool
		err      error
	)
	testkit.Eventually(t, waitFor, func() bool {
		select {
		case err = <-done:
			returned = true
		default:
		}
		return returned || strings.Contains(out.String(), "The demo keeps running")
	}, "the demo never said it keeps running:\n%s", out.String)
	if returned {
		t.Fatalf("the demo returned (%v) before it said it keeps running:\n%s", err, out.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Demo: %v\n%s", err, out.String())
	}
	for _, want := range append(demoWalkThrough, "Try next", "cmx-agent status --config") {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

// With --exit the broker, server and agent are gone when the demo returns (and a temporary folder
// with them): steps that need them would fail.
func TestDemo_WithExitOffersNoStepsThatNeedWhatItStopped(t *testing.T) {
	var out testkit.Buffer
	err := Demo(context.Background(), DemoOptions{Out: &out, Addr: "127.0.0.1:0", Exit: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("Demo: %v\n%s", err, out.String())
	}
	for _, want := range append(demoWalkThrough, "without --exit") {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
	for _, gone := range []string{"Try next", "status --config", "Files:"} {
		if strings.Contains(out.String(), gone) {
			t.Errorf("demo --exit output offers %q for what it stopped or removed:\n%s", gone, out.String())
		}
	}
}

func TestParseID_NumbersStayNumbers(t *testing.T) {
	for in, want := range map[string]string{"42": "42", "1.5": "1.5", "v2": `"v2"`, `"42"`: `"42"`, "push-1": `"push-1"`} {
		id, err := ParseID(in)
		if err != nil || string(id.JSON()) != want {
			t.Errorf("ParseID(%q) = %s, %v; want %s", in, id.JSON(), err, want)
		}
	}
}
