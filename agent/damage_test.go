package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/store"
)

// damageState overwrites endpoint key's state record in the stopped agent's database with bytes
// that do not decode; a record not found there fails the test rather than damaging nothing.
func (h *harness) damageState(key string) {
	h.t.Helper()
	st, err := store.OpenStore(h.cfg.Agent.StateDir, time.Second, 1000)
	if err != nil {
		h.t.Fatal(err)
	}
	defer st.Close()
	if err := st.Update(func(tx *store.Tx) error {
		if st, err := tx.State(key); err != nil || st.AppliedID == "" {
			return fmt.Errorf("no state record of %s to damage (%v)", key, err)
		}
		return tx.PutRaw(key, store.RecordState, 0, []byte(`{"applied_id":`))
	}); err != nil {
		h.t.Fatal(err)
	}
}

// One endpoint's damaged state record costs neither the status nor the metrics of the others: the
// damaged one is named, in GET /v1/status, the STATUS= line and /metrics.
func TestStatus_ADamagedStateRecordIsNamedAndTheOtherEndpointsShown(t *testing.T) {
	h := newHarness(t, "gw-001", "dev-2")
	h.start()
	h.waitStatus(func(s Status) bool { return s.Connected })
	for _, push := range []struct{ token, id string }{{"gw-001", `"cfg-1"`}, {"dev-2", `7`}} {
		topic := h.prefix(push.token) + "/json"
		h.server.Publish(t, topic, 1, []byte(`{"id":`+push.id+`,"entries":[1]}`))
		h.confirmed(topic + "/status")
	}
	h.waitStatus(func(s Status) bool { return len(s.Endpoints) == 2 && s.Endpoints[0].Applied && s.Endpoints[1].Applied })
	h.stop()
	h.damageState("gw-001")
	h.start()

	st := h.waitStatus(func(s Status) bool { return s.Connected })
	if len(st.Endpoints) != 2 {
		t.Fatalf("status endpoints %+v, want both", st.Endpoints)
	}
	dev, gw := st.Endpoints[0], st.Endpoints[1]
	if !strings.HasPrefix(gw.Damaged, "state record does not decode: ") {
		t.Errorf("gw-001 damaged %q, want the record named as not decoding", gw.Damaged)
	}
	if dev.Key != "dev-2" || dev.Damaged != "" || dev.AppliedID != "7" {
		t.Errorf("dev-2 %+v, want 7 applied, not damaged", dev)
	}
	want := "connected to " + h.broker.URL + "; 1/2 endpoints applied, latest dev-2 7; state record damaged: gw-001"
	if got := StatusLine(st); got != want {
		t.Errorf("StatusLine = %q, want %q", got, want)
	}

	fams := h.scrape()
	for _, c := range []struct {
		family string
		labels map[string]string
		want   float64
	}{
		{"cmx_agent_endpoint_damaged", map[string]string{"endpoint": "gw-001"}, 1},
		{"cmx_agent_endpoint_damaged", map[string]string{"endpoint": "dev-2"}, 0},
		{"cmx_agent_endpoint_applied_info", map[string]string{"endpoint": "dev-2", "id": "7"}, 1},
	} {
		if v := value(t, fams, c.family, c.labels); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, v, c.want)
		}
	}
	// The other endpoint's counters are served too. Since this start it received nothing, or push 7
	// once more: its PUBACK may not have left before the stop, and the broker sends it again.
	if v := value(t, fams, "cmx_agent_configurations_received_total", map[string]string{"endpoint": "dev-2"}); v > 1 {
		t.Errorf("configurations received by dev-2 since the start = %v, want 0 or 1", v)
	}
}
