package agent

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// The review's findings, end to end through a real broker, written against the agent's outside
// only, so that they run on the core before and after its rebuild.

func TestFinding_NamedConfigurationAddedByReloadBesideTheDefaultIsRequestedAndApplied(t *testing.T) {
	h := newHarnessConfig(t, config.DialectCMP7, "[[endpoint]]\ntoken = \"gw-001\"\noutput = \"out/gw-001.json\"\n")
	h.start()
	h.requested(gwDefault)
	cfg, err := config.Parse(filepath.Join(h.dir, "agent.toml"), []byte(fmt.Sprintf(
		"[broker]\nservers = [%q]\nkeepalive = \"5s\"\n[kaa]\napp_version = %q\ndialect = \"cmp7\"\n[agent]\nstate_dir = \"state\"\nsocket = \"state/agent.sock\"\nmax_payload = \"64KiB\"\n"+
			"[[endpoint]]\ntoken = \"gw-001\"\noutput = \"out/gw-001.json\"\n[[endpoint]]\ntoken = \"gw-001\"\nname = \"modbus\"\noutput = \"out/gw-001-modbus.json\"\n",
		h.broker.URL, app)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Broker = h.cfg.Broker // only the endpoints change
	if err := h.agent.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	rid, _ := h.requested(gwModbus)
	h.respond(gwModbus, rid, `{"configId":"m1","config":{"unit":1}}`)
	h.waitFile(h.out7(gwModbus), []byte(`{"unit":1}`))
}

func TestFinding_ClientIDStaysWhenTheFirstEndpointIsRemoved(t *testing.T) {
	h := newHarness(t, "gw-a", "gw-b")
	parse := func(tokens ...string) *config.Config {
		src := fmt.Sprintf("[broker]\nservers = [%q]\nkeepalive = \"5s\"\n[kaa]\napp_version = %q\n[agent]\nstate_dir = \"state\"\nsocket = \"state/agent.sock\"\n", h.broker.URL, app)
		for _, tok := range tokens {
			src += fmt.Sprintf("[[endpoint]]\ntoken = %q\noutput = \"out/%s.json\"\n", tok, tok)
		}
		cfg, err := config.Parse(filepath.Join(h.dir, "agent.toml"), []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	h.cfg = parse("gw-a", "gw-b") // no client_id: the default, derived from the first endpoint
	h.start()
	h.pulled("gw-a")
	h.pulled("gw-b")
	h.stop()
	h.cfg = parse("gw-b") // gw-a removed: gw-b is first now
	h.start()
	h.pulled("gw-b")
	if n := h.broker.Connects("cmx-agent-gw-b"); n != 0 {
		t.Errorf("the agent connected %d times as cmx-agent-gw-b: its session (and the pushes queued in it) changed with the endpoint list", n)
	}
	if n := h.broker.Connects("cmx-agent-gw-a"); n != 2 {
		t.Errorf("cmx-agent-gw-a connected %d times, want 2 (both starts)", n)
	}
}

func TestFinding_SameIDPendingAndReceivedOnAnotherTopicIsConfirmedOnEach(t *testing.T) {
	h := newHarness(t)
	var once sync.Once
	held, release := make(chan struct{}), make(chan struct{})
	h.pause = func(step string) {
		if step == StepSynced {
			once.Do(func() { close(held); <-release })
		}
	}
	h.start()
	h.pulled("gw-001")
	h.server.Publish(t, h.prefix("gw-001")+"/json", 1, []byte(`{"id":7,"entries":[7]}`))
	<-held // 7 is being written
	// The same push arrives as the answer to a pull.
	h.server.Publish(t, h.prefix("gw-001")+"/json/42", 1, []byte(`{"id":7,"entries":[7]}`))
	h.waitLog(`id=7 topic=kp1/app-v1/cmx/gw-001/json/42`, 1)
	close(release)
	for _, topic := range []string{h.prefix("gw-001") + "/json/status", h.prefix("gw-001") + "/json/42/status"} {
		m := h.all.NextMatching(t, waitFor, func(m mqtttest.Message) bool { return m.Topic == topic })
		if string(m.Payload) != `{"id":7,"status":"ok"}` {
			t.Errorf("%s: %s", topic, m.Payload)
		}
	}
}

func TestFinding_CMP7ServerGoingBackToTheConfigurationBeingWrittenEndsOnIt(t *testing.T) {
	h := newCMP7Harness(t)
	arm, blocked, release := h.holdWrite()
	arm()
	rids := h.startCMP7()
	h.respond(gwDefault, rids[gwDefault], `{"configId":"z","config":["z"]}`)
	<-blocked // z is being written
	h.respond(gwDefault, 0, `{"configId":"b","config":["b"]}`)
	h.waitLog(`id=b`, 1)
	h.respond(gwDefault, 0, `{"configId":"z","config":["z"]}`) // the server's last word
	h.waitLog(`id=z`, 2)
	close(release)
	h.waitLog(`msg="configuration applied" endpoint=gw-001 id=`, 1)
	h.waitFile(h.out7(gwDefault), []byte(`["z"]`))
}

func TestFinding_CMP7TransientFailureIsRetriedWhenTheServerSendsItAgain(t *testing.T) {
	h := newCMP7Harness(t)
	// The output's folder is a file: the write fails (500) until it is a folder again.
	blocker := filepath.Join(h.dir, "out")
	if err := os.WriteFile(blocker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rids := h.startCMP7()
	h.respond(devEp, rids[devEp], `{"configId":"c1","config":[1]}`)
	if _, a := h.applied(devEp); a.StatusCode != 500 {
		t.Fatalf("first report %d, want 500", a.StatusCode)
	}
	os.Remove(blocker)
	h.respond(devEp, 0, `{"configId":"c1","config":[1]}`)
	if _, a := h.applied(devEp); a.StatusCode != 200 {
		t.Errorf("report after the cause went: %d, want 200 (applied, not the stored 500)", a.StatusCode)
	}
	h.waitFile(h.out7(devEp), []byte(`[1]`))
}

func TestFinding_ReloadChangingTheTemplateAppliesTheStoredConfigurationAtOnce(t *testing.T) {
	h := newHarness(t)
	tmplA, tmplB := filepath.Join(h.dir, "a.tmpl"), filepath.Join(h.dir, "b.tmpl")
	for path, body := range map[string]string{tmplA: `A={{index . 0}}`, tmplB: `B={{index . 0}}`} {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.cfg.Endpoints[0].Template = tmplA
	h.start()
	h.pulled("gw-001")
	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(t, topic, 1, []byte(`{"id":1,"entries":[7]}`))
	h.confirmed(topic + "/status")
	h.waitFile(h.output("gw-001"), []byte(`A=7`))
	cfg := *h.cfg
	cfg.Endpoints = append([]config.Endpoint(nil), h.cfg.Endpoints...)
	cfg.Endpoints[0].Template = tmplB
	if err := h.agent.Reload(&cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	// No new configuration comes: the stored one is rendered with the new template.
	h.waitFile(h.output("gw-001"), []byte(`B=7`))
}

func TestFinding_ReloadBeforeRunRemovingAnEndpointReturns(t *testing.T) {
	h := newHarness(t, "gw-a", "gw-b")
	a, err := New(h.cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cfg := *h.cfg
	cfg.Endpoints = h.cfg.Endpoints[:1]
	done := make(chan error, 1)
	go func() { done <- a.Reload(&cfg) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Reload: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Reload before Run did not return: it waits for an endpoint that never started")
	}
}

func TestFinding_PushFarOverMaxPayloadIsRefusedWithItsIDAndNotHeldWhole(t *testing.T) {
	h := newHarness(t) // max_payload 64 KiB
	h.start()
	h.pulled("gw-001")
	topic := h.prefix("gw-001") + "/json"
	big := append(append([]byte(`{"id":"big","entries":["`), bytes.Repeat([]byte("x"), 8<<20)...), `"]}`...)
	h.server.Publish(t, topic, 1, big)
	_, c := h.confirmed(topic + "/status")
	if string(c["id"]) != `"big"` {
		t.Errorf("refusal id = %s, want \"big\": its start names it", c["id"])
	}
	// Acknowledged, not delivered again in a loop: the next push is answered next.
	h.server.Publish(t, topic, 1, []byte(`{"id":2,"entries":[2]}`))
	if _, c := h.confirmed(topic + "/status"); string(c["id"]) != "2" {
		t.Errorf("next confirmation is for %s, want 2", c["id"])
	}
}
