package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cmx-agent/cmx-agent/config"
)

// An apply that does not end (here a hook waiting for a gate, with a long timeout) shows in status,
// with its configuration and start, and in the metrics as a running time that grows; the other
// endpoint's push is applied meanwhile.
func TestStatus_AStuckApplyIsNamedInStatusAndMetrics(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "go")
	h := newHarnessConfig(t, config.DialectCMX3, fmt.Sprintf(`[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
hook = ["sh", "-c", "while [ ! -e %s ]; do sleep 0.01; done"]
hook_timeout = "10m"
[[endpoint]]
token = "dev-2"
output = "out/dev-2.json"
`, gate))
	h.start()
	h.pulled("gw-001")
	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(t, topic, 1, []byte(`{"id":"slow-1","entries":[1]}`))
	st := h.waitStatus(func(s Status) bool { return len(s.Endpoints) == 2 && s.Endpoints[1].ApplyingID == "slow-1" })
	if gw := st.Endpoints[1]; gw.Key != "gw-001" || gw.ApplyingSince.IsZero() {
		t.Errorf("status of gw-001 %+v, want slow-1 applying since a time", gw)
	}
	if dev := st.Endpoints[0]; dev.ApplyingID != "" || !dev.ApplyingSince.IsZero() {
		t.Errorf("status of dev-2 %+v, want nothing applying", dev)
	}
	other := h.prefix("dev-2") + "/json"
	h.server.Publish(t, other, 1, []byte(`{"id":"quick","entries":[2]}`))
	h.confirmed(other + "/status")
	h.waitFile(h.output("dev-2"), []byte(`[2]`))

	first := value(t, h.scrape(), "cmx_agent_endpoint_apply_running_seconds", map[string]string{"endpoint": "gw-001"})
	h.waitMetric("cmx_agent_endpoint_apply_running_seconds", map[string]string{"endpoint": "gw-001"},
		func(v float64) bool { return v > first && v > 0 }) // growing
	if v := value(t, h.scrape(), "cmx_agent_endpoint_apply_running_seconds", map[string]string{"endpoint": "dev-2"}); v != 0 {
		t.Errorf("apply running seconds of dev-2 = %v, want 0", v)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h.confirmed(topic + "/status")
	h.waitStatus(func(s Status) bool {
		return s.Endpoints[1].ApplyingSince.IsZero() && s.Endpoints[1].AppliedID == "slow-1"
	})
	if v := value(t, h.scrape(), "cmx_agent_endpoint_apply_running_seconds", map[string]string{"endpoint": "gw-001"}); v != 0 {
		t.Errorf("apply running seconds of gw-001 after the hook = %v, want 0", v)
	}
}
