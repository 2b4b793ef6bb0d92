package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// configFor is the harness's configuration with these endpoint tables (TOML after each [[endpoint]]).
func (h *harness) configFor(endpoints ...string) *config.Config {
	h.t.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "[broker]\nservers = [%q]\nkeepalive = \"5s\"\nreconnect_spread = \"0s\"\n[kaa]\napp_version = %q\n[agent]\nstate_dir = \"state\"\nsocket = \"state/agent.sock\"\nmax_payload = \"64KiB\"\n", h.broker.URL, app)
	for _, e := range endpoints {
		fmt.Fprintf(&sb, "[[endpoint]]\n%s\n", strings.ReplaceAll(e, "{dir}", h.dir))
	}
	cfg, err := config.Parse(filepath.Join(h.dir, "agent.toml"), []byte(sb.String()))
	if err != nil {
		h.t.Fatalf("config: %v", err)
	}
	return cfg
}

// script writes an executable shell script into the test folder and returns its path.
func (h *harness) script(name, body string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// push publishes a cmx3 push for gw-001 and returns the status of its confirmation.
func (h *harness) push(id, entries string) string {
	h.t.Helper()
	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(h.t, topic, 1, []byte(fmt.Sprintf(`{"id":%s,"entries":%s}`, id, entries)))
	for {
		_, c := h.confirmed(topic + "/status")
		if string(c["id"]) == id {
			return status(h.t, c)
		}
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// hookLog is a hook that records "<config id>=<output bytes>" per run and fails (exit 7) on outputs
// holding "bad".
const hookLog = `echo "$CMX_CONFIG_ID=$(cat "$CMX_OUTPUT")" >> "$(dirname "$0")/hook.log"
if grep -q bad "$CMX_OUTPUT"; then echo "reload failed: bad value" >&2; echo "more detail" >&2; exit 7; fi
`

func TestReload_AddsRemovesAndChangesEndpointsWithoutReconnecting(t *testing.T) {
	h := newHarness(t)
	gw1 := "token = \"gw-001\"\noutput = \"out/gw-001.json\""
	gw2 := "token = \"gw-002\"\noutput = \"out/gw-002.json\""
	gw3 := "token = \"gw-003\"\noutput = \"out/gw-003.json\""
	h.cfg = h.configFor(gw1, gw2)
	h.start()
	h.pulled("gw-001")
	clientID := h.clientID()

	h.script("hook.sh", hookLog)
	if err := h.agent.Reload(h.configFor(gw1+"\nhook = [\"{dir}/hook.sh\"]", gw3)); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	// Added: subscribed and asked for its configuration on the same connection.
	h.pulled("gw-003")
	h.server.Publish(t, h.prefix("gw-003")+"/json", 1, []byte(`{"id":1,"entries":["three"]}`))
	h.waitFile(h.output("gw-003"), []byte(`["three"]`))
	// Removed: unsubscribed; a push for it is not applied.
	h.broker.WaitLog(t, "Received UNSUBSCRIBE from "+clientID, 1, waitFor)
	h.server.Publish(t, h.prefix("gw-002")+"/json", 1, []byte(`{"id":1,"entries":["two"]}`))
	// Changed: its new hook runs for the next configuration.
	if s := h.push(`5`, `["one"]`); s != "ok" {
		t.Errorf("gw-001 status = %q", s)
	}
	if got := readLines(t, filepath.Join(h.dir, "hook.log")); len(got) != 1 || got[0] != `5=["one"]` {
		t.Errorf("gw-001 hook runs %q, want the new hook once", got)
	}
	if _, err := os.Stat(h.output("gw-002")); !os.IsNotExist(err) {
		t.Errorf("removed endpoint's output written: %v", err)
	}
	for _, m := range h.all.All() {
		if m.Topic == h.prefix("gw-002")+"/json/status" {
			t.Errorf("removed endpoint confirmed a push: %s", m)
		}
	}
	if n := h.broker.Connects(clientID); n != 1 {
		t.Errorf("broker saw %d CONNECTs from %s, want 1 (no reconnect for an endpoint change)", n, clientID)
	}
}

func TestReload_BrokerOrKaaChangeNeedsARestart(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.pulled("gw-001")
	cfg := h.configFor("token = \"gw-001\"\noutput = \"out/gw-001.json\"")
	cfg.Kaa.AppVersion = "other-v2"
	err := h.agent.Reload(cfg)
	if !errors.Is(err, ErrRestartNeeded) || !strings.Contains(err.Error(), "[kaa]") {
		t.Errorf("Reload = %v, want ErrRestartNeeded naming [kaa]", err)
	}
	// Still serving the old configuration.
	h.server.Publish(t, h.prefix("gw-001")+"/json", 1, []byte(`{"id":1,"entries":[1]}`))
	h.all.NextMatching(t, waitFor, func(m mqtttest.Message) bool { return m.Topic == h.prefix("gw-001")+"/json/status" })
}
