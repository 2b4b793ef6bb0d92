package engine

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/config"
)

// Each limit of cmx.Limits: over the limit the push gets an error status naming the limit (with its
// id when one can be read) at the push's topic and QoS, and the file stays as it was; at the limit
// it is applied.
func TestLimits_EachIsRefusedWithAClearStatusAndChangesNothing(t *testing.T) {
	t.Parallel()
	const maxPayload = 1 << 20 // room for 100,001 entries
	c := startCoreWith(t, coreOptions{MaxPayload: maxPayload}, config.Endpoint{Token: "gw"})
	good := `["good"]`
	wantStatus(t, c.push(`"good"`, good), "ok")

	nested := func(depth int) string { // entries itself counts as one level, the payload object as another
		return strings.Repeat("[", depth-2) + strings.Repeat("]", depth-2)
	}
	entries := func(n int) string { return "[" + strings.TrimSuffix(strings.Repeat("0,", n), ",") + "]" }
	oversized := `{"id":7,"entries":["` + strings.Repeat("x", maxPayload) + `"]}`
	huge := strings.Repeat("x", 4<<20)
	idBeforeCut := `{"id":"big","entries":["` + huge + `"]}`
	idAfterCut := `{"entries":["` + huge + `"], "id": 9}`
	tooLarge := func(n int) string {
		return fmt.Sprintf("invalid payload: payload too large: %d bytes, limit %d", n, maxPayload)
	}
	cases := []struct {
		name    string
		payload string
		cut     bool   // the transport hands only the first max_payload bytes, with the size sent
		qos0    bool   // sent at QoS 0 (else 1)
		status  string // "" = applied
		id      string
	}{
		{name: "depth over 64", payload: `{"id":1,"entries":[` + nested(65) + `]}`, status: "invalid payload: nesting deeper than 64 levels"},
		{name: "depth at 64", payload: `{"id":2,"entries":[` + nested(64) + `]}`, id: "2"},
		{name: "id over 256 bytes", payload: fmt.Sprintf(`{"id":%q,"entries":[]}`, strings.Repeat("i", 255)), status: "invalid payload: id longer than 256 bytes"},
		{name: "id at 256 bytes", payload: fmt.Sprintf(`{"id":%q,"entries":[3]}`, strings.Repeat("i", 254)), id: `"` + strings.Repeat("i", 254) + `"`},
		{name: "numeric id over 256 bytes", payload: `{"id":1` + strings.Repeat("0", 256) + `,"entries":[]}`, status: "invalid payload: id longer than 256 bytes"},
		{name: "entries over 100000", payload: `{"id":5,"entries":` + entries(100001) + `}`, status: "invalid payload: too many entries: 100001, limit 100000", id: "5"},
		{name: "entries at 100000", payload: `{"id":6,"entries":` + entries(100000) + `}`, id: "6"},
		{name: "payload over max_payload", payload: oversized, status: tooLarge(len(oversized)), id: "7"},
		{name: "payload over max_payload at QoS 0", payload: oversized, qos0: true, status: tooLarge(len(oversized)), id: "7"},
		{name: "cut payload with the id before the cut", payload: idBeforeCut, cut: true, status: tooLarge(len(idBeforeCut)), id: `"big"`},
		{name: "cut payload with the id after the cut", payload: idAfterCut, cut: true, status: tooLarge(len(idAfterCut))},
	}
	last, refused := good, 0
	for _, tc := range cases {
		qos := byte(1)
		if tc.qos0 {
			qos = 0
		}
		m := Message{Topic: p + "/json", QoS: qos, Payload: []byte(tc.payload)}
		if tc.cut {
			m.Payload, m.Size = m.Payload[:maxPayload], len(tc.payload)
		}
		got := c.send(m)
		want := tc.status
		if want == "" {
			want = "ok"
		}
		if got.Status != want {
			t.Errorf("%s: status = %q, want %q", tc.name, got.Status, want)
		}
		if got.ID != tc.id {
			t.Errorf("%s: id = %s, want %s (confirmation %.200s)", tc.name, got.ID, tc.id, got.raw)
		}
		if got.Topic != p+"/json/status" || got.QoS != qos {
			t.Errorf("%s: confirmed at %s QoS %d, want %s/json/status QoS %d", tc.name, got.Topic, got.QoS, p, qos)
		}
		if tc.status != "" {
			refused++
		} else {
			var body struct {
				Entries json.RawMessage `json:"entries"`
			}
			if err := json.Unmarshal([]byte(tc.payload), &body); err != nil {
				t.Fatal(err)
			}
			last = string(body.Entries)
		}
		wantFile(t, c.output("gw"), last)
	}
	if n := c.waitLog("configuration refused", refused); n != refused {
		t.Errorf("%d log lines say a configuration was refused, want one per refused push (%d)", n, refused)
	}
}
