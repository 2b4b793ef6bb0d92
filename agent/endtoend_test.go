package agent

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cmx-agent/cmx-agent/config"
)

// Behaviours seen only from the agent's outside, end to end through a real broker: what the engine's
// own tests cannot show (a broker's view of the client id, a reload's subscriptions, the
// transport's cut of a payload over the limit).

func TestReload_ANamedConfigurationAddedBesideTheDefaultIsRequestedAndApplied(t *testing.T) {
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

func TestClientID_TheBrokerSeesTheSameOneWhenTheFirstEndpointIsRemoved(t *testing.T) {
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

func TestReload_ChangingTheTemplateAppliesTheStoredConfigurationAtOnce(t *testing.T) {
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

func TestPush_FarOverMaxPayloadIsRefusedWithItsIDAndNotHeldWhole(t *testing.T) {
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
