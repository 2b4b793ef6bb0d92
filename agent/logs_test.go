package agent

import (
	"strings"
	"testing"
)

// A push whose bytes are already in place writes nothing and runs no hook; its log says so once,
// and does not also claim it was applied.
func TestLog_AnUnchangedPushIsLoggedOnceAsUnchanged(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.pulled("gw-001")
	h.pushAndConfirm("gw-001", "first", `[{"same":1}]`)
	h.pushAndConfirm("gw-001", "again", `[{"same":1}]`)
	// The confirmation may go out before the result's commit; the counters follow the commit.
	h.waitMetric("cmx_agent_configurations_total", map[string]string{"endpoint": "gw-001", "result": "applied"},
		func(v float64) bool { return v == 2 })
	logs := h.logs.String()
	for _, c := range []struct {
		line string
		want int
	}{
		{`msg="configuration applied" endpoint=gw-001 id=first`, 1},
		{`msg="configuration applied" endpoint=gw-001 id=again`, 0},
		{`msg="configuration unchanged" endpoint=gw-001 id=again`, 1},
	} {
		if n := strings.Count(logs, c.line); n != c.want {
			t.Errorf("%d lines %s, want %d:\n%s", n, c.line, c.want, logs)
		}
	}
}
