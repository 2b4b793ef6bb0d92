package agent

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// Each limit of cmx.Limits, end to end through a real broker: over the limit the push gets an error
// status naming the limit and the file stays as it was; at the limit it is applied.
func TestLimits_EachIsRefusedWithAClearStatusAndChangesNothing(t *testing.T) {
	h := newHarness(t)
	h.cfg.Agent.MaxPayload = 1 << 20 // room for 100,001 entries; max_payload has its own case
	h.start()
	h.pulled("gw-001")
	topic := h.prefix("gw-001") + "/json"
	good := `["good"]`
	h.pushAndConfirm("gw-001", "good", good)

	nested := func(depth int) string { // entries itself counts as one level, the payload object as another
		return strings.Repeat("[", depth-2) + strings.Repeat("]", depth-2)
	}
	oversized := `{"id":7,"entries":["` + strings.Repeat("x", 1<<20) + `"]}`
	entries := func(n int) string { return "[" + strings.TrimSuffix(strings.Repeat("0,", n), ",") + "]" }
	cases := []struct {
		name    string
		payload string
		status  string // "" = applied
		id      string
	}{
		{"depth over 64", `{"id":1,"entries":[` + nested(65) + `]}`, "invalid payload: nesting deeper than 64 levels", ""},
		{"depth at 64", `{"id":2,"entries":[` + nested(64) + `]}`, "", "2"},
		{"id over 256 bytes", fmt.Sprintf(`{"id":%q,"entries":[]}`, strings.Repeat("i", 255)), "invalid payload: id longer than 256 bytes", ""},
		{"id at 256 bytes", fmt.Sprintf(`{"id":%q,"entries":[3]}`, strings.Repeat("i", 254)), "", `"` + strings.Repeat("i", 254) + `"`},
		{"numeric id over 256 bytes", `{"id":1` + strings.Repeat("0", 256) + `,"entries":[]}`, "invalid payload: id longer than 256 bytes", ""},
		{"entries over 100000", `{"id":5,"entries":` + entries(100001) + `}`, "invalid payload: too many entries: 100001, limit 100000", "5"},
		{"entries at 100000", `{"id":6,"entries":` + entries(100000) + `}`, "", "6"},
		{"payload over max_payload", oversized, fmt.Sprintf("invalid payload: payload too large: %d bytes, limit 1048576", len(oversized)), "7"},
	}
	last := []byte(good)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.server.Publish(t, topic, 1, []byte(tc.payload))
			m, c := h.confirmed(topic + "/status")
			want := tc.status
			if want == "" {
				want = "ok"
			}
			if got := status(t, c); got != want {
				t.Errorf("status = %q, want %q", got, want)
			}
			if string(c["id"]) != tc.id {
				t.Errorf("id = %s, want %s (confirmation %.200s)", c["id"], tc.id, m.Payload)
			}
			if tc.status == "" {
				var body struct {
					Entries jsonRaw `json:"entries"`
				}
				decodeJSON(t, tc.payload, &body)
				last = body.Entries
			}
			h.waitFile(h.output("gw-001"), last)
		})
	}
}

// Whatever the network sends — a topic of 20,000 digits, a payload of garbage — no log line of the
// agent grows with it.
func TestLogs_AreBoundedWhateverThePushCarries(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.pulled("gw-001")
	topic := h.prefix("gw-001") + "/json/" + "1" + strings.Repeat("9", 20000)
	payload := append([]byte(`{"id":"`+strings.Repeat("\u00e9", 100)+`","entries":[`), bytes.Repeat([]byte("x"), 30000)...)
	h.server.Publish(t, topic, 1, payload)
	_, c := h.confirmed(topic + "/status")
	if s := status(t, c); !strings.HasPrefix(s, "invalid payload: not JSON") {
		t.Errorf("status = %q", s)
	}
	h.pushAndConfirm("gw-001", "after", `[1]`)
	const maxLine = 8 * maxLogValue // a handful of bounded values per line
	for _, l := range strings.Split(h.logs.String(), "\n") {
		if len(l) > maxLine {
			t.Errorf("log line of %d bytes, want at most %d: %.300s…", len(l), maxLine, l)
		}
	}
	if !strings.Contains(h.logs.String(), "more bytes)") {
		t.Errorf("no log line says it was shortened; the long topic was not logged at all?")
	}
}

func TestBound_CutsOnACharacterBoundary(t *testing.T) {
	s := strings.Repeat("é", maxLogValue) // 2 bytes each
	got := bound(s)
	if !strings.HasPrefix(got, strings.Repeat("é", maxLogValue/2)+"…(") || !strings.HasSuffix(got, fmt.Sprintf("(%d more bytes)", len(s)-maxLogValue)) {
		t.Errorf("bound = %.40q…%q", got, got[len(got)-30:])
	}
	if bound("short") != "short" {
		t.Error("short string changed")
	}
}
