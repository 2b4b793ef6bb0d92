package cloud

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// agent7 is a real cmp7 agent run in-process from dir, so a test can stop it and start it again on
// the same state.
type agent7 struct {
	t    *testing.T
	dir  string
	toml string
	stop func()
}

// gateway7 has a default and a named configuration for gw-001, and dev-002 for which the server
// has no file.
func gateway7(brokerURL string) string {
	return fmt.Sprintf(`[broker]
servers = [%q]
[kaa]
app_version = %q
dialect = "cmp7"
[agent]
state_dir = "state"
socket = "state/agent.sock"
[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
[[endpoint]]
token = "gw-001"
name = "modbus"
output = "out/gw-001-modbus.json"
[[endpoint]]
token = "dev-002"
output = "out/dev-002.json"
`, brokerURL, testApp)
}

func newAgent7(t *testing.T, toml string) *agent7 {
	a := &agent7{t: t, dir: t.TempDir(), toml: toml}
	a.start()
	t.Cleanup(func() { a.stop() })
	return a
}

func (a *agent7) start() {
	a.t.Helper()
	cfg, err := config.Parse(filepath.Join(a.dir, "agent.toml"), []byte(a.toml))
	if err != nil {
		a.t.Fatal(err)
	}
	ag, err := agent.New(cfg, agent.Options{})
	if err != nil {
		a.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ag.Run(ctx) }()
	a.stop = func() {
		cancel()
		<-done
		ag.Close()
		a.stop = func() {}
	}
}

func (a *agent7) out(name string) string { return filepath.Join(a.dir, "out", name) }

func writeConfig(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func prefix7(token string) string { return cmx.Prefix(testApp, config.DefaultExtension, token) }

// route7 reads a topic under P/config/json of token.
func route7(token, topic string) cmx.ConfigRoute {
	rest, ok := strings.CutPrefix(topic, prefix7(token)+"/")
	if !ok {
		return cmx.ConfigRoute{}
	}
	return cmx.ParseConfigTopic(strings.Split(rest, "/"))
}

func isRequest7(token, name string) func(mqtttest.Message) bool {
	return func(m mqtttest.Message) bool {
		r := route7(token, m.Topic)
		return r.Kind == cmx.TopicRequest && r.Name == name
	}
}

func isResponse7(token, name string) func(mqtttest.Message) bool {
	return func(m mqtttest.Message) bool {
		r := route7(token, m.Topic)
		return r.Kind == cmx.TopicResponse && r.Name == name
	}
}

func serve7(t *testing.T, b *mqtttest.Broker, configs string) *served {
	return startServe(t, ServeOptions{Options: Options{Broker: b.URL, AppVersion: testApp, Dialect: config.DialectCMP7}, Configs: configs})
}

func TestServeCmp7_AnswersRequestsObservesChangesAndPrintsAppliedReports(t *testing.T) {
	b := mqtttest.Start(t)
	watch := b.Client(t)
	gw := watch.Subscribe(t, prefix7("gw-001")+"/config/json/#", 1)
	dev := watch.Subscribe(t, prefix7("dev-002")+"/config/json/#", 1)
	configs := t.TempDir()
	writeConfig(t, configs, "gw-001.json", `{"a":1}`)
	writeConfig(t, configs, "gw-001.modbus.json", `[{"reg":40001}]`)
	s := serve7(t, b, configs)
	a := newAgent7(t, gateway7(b.URL))

	// Each configuration's request is answered with its own file; both are reported applied.
	waitFile(t, a.out("gw-001.json"), `{"a":1}`)
	waitFile(t, a.out("gw-001-modbus.json"), `[{"reg":40001}]`)
	seen := map[string]Confirmation{}
	for range 2 {
		c := s.next(t)
		seen[Target{c.Token, c.Name}.String()] = c
	}
	for _, key := range []string{"gw-001", "gw-001/modbus"} {
		if c := seen[key]; !c.OK() || c.Code != 200 || !strings.HasPrefix(c.ID.Text(), "v") {
			t.Errorf("applied report of %s = %+v, want 200 with a version configId", key, c)
		}
	}

	// No file for dev-002: the answer says none is assigned, at the request's status topic, and the
	// agent writes nothing.
	req := dev.NextMatching(t, waitFor, isRequest7("dev-002", ""))
	resp := dev.NextMatching(t, waitFor, isResponse7("dev-002", ""))
	if resp.Topic != req.Topic+"/status" || string(resp.Payload) != string(cmx.NoneAssignedResponse()) {
		t.Errorf("answer for dev-002: %s %s, want %s/status %s", resp.Topic, resp.Payload, req.Topic, cmx.NoneAssignedResponse())
	}

	// A change goes to the observing request's response topic (its request id), not only to the
	// bare status topic, and is applied and reported.
	gwReq := gw.NextMatching(t, waitFor, isRequest7("gw-001", ""))
	gw.NextMatching(t, waitFor, isResponse7("gw-001", "")) // the answer to it
	writeConfig(t, configs, "gw-001.json", `{"a":2}`)
	pushed := gw.NextMatching(t, waitFor, isResponse7("gw-001", ""))
	if pushed.Topic != gwReq.Topic+"/status" || !strings.Contains(string(pushed.Payload), `"config":{"a":2}`) {
		t.Errorf("change sent as %s %s, want at %s/status with the new config", pushed.Topic, pushed.Payload, gwReq.Topic)
	}
	waitFile(t, a.out("gw-001.json"), `{"a":2}`)
	c := s.next(t)
	if !c.OK() || c.Token != "gw-001" || c.Name != "" || c.ID.Key() == seen["gw-001"].ID.Key() {
		t.Errorf("report after the change %+v, want gw-001 applied with a new configId", c)
	}
	if _, err := os.Stat(a.out("dev-002.json")); !os.IsNotExist(err) {
		t.Errorf("dev-002 output exists (%v), want none: no configuration was assigned", err)
	}

	lines := strings.Split(strings.TrimSpace(s.out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[2], `applied gw-001 configId="v`) || !strings.HasSuffix(lines[2], "statusCode=200") {
		t.Errorf("printed reports:\n%s\nwant 3 lines, the last `applied gw-001 configId=\"v...\" statusCode=200`", s.out.String())
	}
}

func TestServeCmp7_RestartedAgentNamingTheCurrentConfigGetsUnchanged(t *testing.T) {
	b := mqtttest.Start(t)
	gw := b.Client(t).Subscribe(t, prefix7("gw-001")+"/config/json/#", 1)
	configs := t.TempDir()
	writeConfig(t, configs, "gw-001.json", `{"a":1}`)
	s := serve7(t, b, configs)
	a := newAgent7(t, gateway7(b.URL))
	waitFile(t, a.out("gw-001.json"), `{"a":1}`)
	first := s.next(t) // the only report: modbus and dev-002 have no file, so none is assigned
	a.stop()

	a.start()
	req := gw.NextMatching(t, waitFor, func(m mqtttest.Message) bool {
		return isRequest7("gw-001", "")(m) && strings.Contains(string(m.Payload), first.ID.Text())
	})
	resp := gw.NextMatching(t, waitFor, func(m mqtttest.Message) bool { return m.Topic == req.Topic+"/status" })
	if string(resp.Payload) != "{}" {
		t.Errorf("answer to a request naming the current configId %s: %s, want {}", first.ID.Text(), resp.Payload)
	}
}

func TestServeCmp7_RequestsWithoutAgent(t *testing.T) {
	b := mqtttest.Start(t)
	configs := t.TempDir()
	writeConfig(t, configs, "gw-001.json", `{"a":1}`)
	serve7(t, b, configs)
	dev := b.Client(t)
	answers := dev.Subscribe(t, prefix7("gw-001")+"/config/json/#", 1)
	ask := func(topic, payload string) mqtttest.Message {
		t.Helper()
		dev.Publish(t, topic, 1, []byte(payload))
		return answers.NextMatching(t, waitFor, func(m mqtttest.Message) bool { return strings.HasPrefix(m.Topic, topic+"/") })
	}

	// Kaa's own clients send requests without a request id.
	m := ask(prefix7("gw-001")+"/config/json", `{}`)
	var current string
	if r, err := cmx.ParseConfigResponse(m.Payload, cmx.DefaultLimits(0)); err != nil || r.Kind != cmx.NewConfig || string(r.Config) != `{"a":1}` {
		t.Fatalf("answer %s %s (%v), want the config", m.Topic, m.Payload, err)
	} else {
		current = r.ConfigID
	}
	if m.Topic != prefix7("gw-001")+"/config/json/status" {
		t.Errorf("answer at %s, want config/json/status", m.Topic)
	}
	if m := ask(prefix7("gw-001")+"/config/json/7", `{"observe":true,"configId":"older"}`); !strings.Contains(string(m.Payload), `"configId":"`+current+`"`) {
		t.Errorf("request naming an older configId: %s, want the current one", m.Payload)
	}
	if m := ask(prefix7("gw-001")+"/config/json/8", `{"observe":true,"configId":"`+current+`"}`); string(m.Payload) != "{}" || m.Topic != prefix7("gw-001")+"/config/json/8/status" {
		t.Errorf("request naming the current configId: %s %s, want {} at .../8/status", m.Topic, m.Payload)
	}
	m = ask(prefix7("gw-001")+"/config/json/9", `[1]`)
	e, err := cmx.ParseConfigError(m.Payload, cmx.DefaultLimits(0))
	if err != nil || e.StatusCode != 400 || m.Topic != prefix7("gw-001")+"/config/json/9/error" {
		t.Errorf("malformed request answered %s %s (%v), want 400 at .../9/error", m.Topic, m.Payload, err)
	}
	answers.None(t, 300*time.Millisecond)
}

func TestPushCmp7_WaitsForTheAppliedReport(t *testing.T) {
	b := mqtttest.Start(t)
	reqs := b.Client(t).Subscribe(t, prefix7("gw-001")+"/config/json/#", 1)
	a := newAgent7(t, gateway7(b.URL))
	// Subscribed before it requests: a request proves the agent receives pushes.
	reqs.NextMatching(t, waitFor, isRequest7("gw-001", "modbus"))
	o := Options{Broker: b.URL, AppVersion: testApp, Dialect: config.DialectCMP7}
	ctx := context.Background()

	id, _ := ParseID("cfg-1")
	c, err := Push(ctx, o, Target{Token: "gw-001"}, id, []byte(`{"x":1}`), waitFor)
	if err != nil || !c.OK() || c.Code != 200 || c.ID.Text() != "cfg-1" || c.Name != "" {
		t.Fatalf("Push = %+v, %v; want applied 200 for cfg-1", c, err)
	}
	waitFile(t, a.out("gw-001.json"), `{"x":1}`)

	// A number-looking --id is still a configId string.
	nid, _ := ParseID("42")
	c, err = Push(ctx, o, Target{Token: "gw-001", Name: "modbus"}, nid, []byte(`[1,2]`), waitFor)
	if err != nil || !c.OK() || c.Name != "modbus" || c.ID.Text() != "42" {
		t.Fatalf("Push modbus = %+v, %v; want applied for configId 42", c, err)
	}
	waitFile(t, a.out("gw-001-modbus.json"), `[1,2]`)
	if got, _ := os.ReadFile(a.out("gw-001.json")); string(got) != `{"x":1}` {
		t.Errorf("default configuration = %q after a push to modbus, want it untouched", got)
	}

	bid, _ := ParseID("bad-1")
	c, err = PushRaw(ctx, o, Target{Token: "gw-001"}, bid, []byte(`{"configId":"bad-1"}`), waitFor)
	if err != nil || c.OK() || c.Code != 400 || !strings.Contains(c.Status, "config missing") {
		t.Fatalf("PushRaw without config = %+v, %v; want a 400 report saying config is missing", c, err)
	}
	if got, _ := os.ReadFile(a.out("gw-001.json")); string(got) != `{"x":1}` {
		t.Errorf("output = %q after a refused push, want it untouched", got)
	}

	if _, err := Push(ctx, o, Target{Token: "gw-001", Name: "status"}, id, []byte(`1`), waitFor); err == nil {
		t.Errorf("Push to a configuration named status: no error")
	}
	if _, err := Push(ctx, Options{Broker: b.URL, AppVersion: testApp}, Target{Token: "gw-001", Name: "modbus"}, id, []byte(`[]`), waitFor); err == nil {
		t.Errorf("Push of a named configuration in cmx3: no error")
	}
}

func TestCmp7Target_ReadsTokenAndNameFromTheFileName(t *testing.T) {
	for base, want := range map[string]Target{
		"gw-001":        {Token: "gw-001"},
		"gw-001.modbus": {Token: "gw-001", Name: "modbus"},
		"my.gw.plc_2":   {Token: "my.gw", Name: "plc_2"},
		"gw.1":          {Token: "gw.1"}, // all digits is no name
		"gw.status":     {Token: "gw.status"},
	} {
		if got, ok := (cmp7{}).target(base); !ok || got != want {
			t.Errorf("target(%q) = %+v, %v; want %+v", base, got, ok, want)
		}
	}
	for _, base := range []string{"", ".gw-001", "a+b", "a/b"} {
		if _, ok := (cmp7{}).target(base); ok {
			t.Errorf("target(%q) accepted", base)
		}
	}
}

func TestDialect_UnknownIsAClearError(t *testing.T) {
	_, err := Push(context.Background(), Options{AppVersion: testApp, Dialect: "cmx9"}, Target{Token: "gw"}, cmx.ID{}, []byte(`[]`), 0)
	if err == nil || !strings.Contains(err.Error(), `unknown dialect "cmx9" (cmx3 or cmp7)`) {
		t.Errorf("dialect cmx9: %v", err)
	}
}
