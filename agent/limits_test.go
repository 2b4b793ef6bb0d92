package agent

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

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
