package agent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// `cmx-agent sync` asked 20 times of an agent whose server stays silent: each asks once, and the
// repeats of the unanswered request stay one per endpoint and interval, as the broker sees them.
func TestAPI_ManySyncsAgainstASilentServerAddNoRepeats(t *testing.T) {
	const pt = 400 * time.Millisecond
	h := newHarness(t, "gw-001", "dev-2")
	h.pullTimeout = pt
	h.start()
	tokens := []string{"gw-001", "dev-2"}
	pulls := func(tok string) int {
		return h.count(func(m mqtttest.Message) bool { return m.Topic == h.prefix(tok)+"/pull/json" })
	}
	for _, tok := range tokens {
		h.pulled(tok)
	}
	before := map[string]int{}
	for _, tok := range tokens {
		before[tok] = pulls(tok)
	}
	const syncs = 20
	for range syncs {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		res, err := h.api().Sync(ctx)
		cancel()
		if err != nil || res.Requested != 2 {
			t.Fatalf("Sync = %+v, %v; want 2 endpoints requested", res, err)
		}
	}
	// Absence can only be shown by waiting: two intervals, in which one loop repeats once (its
	// interval doubles), and 21 loops 21 times.
	time.Sleep(2 * pt)
	for _, tok := range tokens {
		if repeats := pulls(tok) - before[tok] - syncs; repeats > 2 {
			t.Errorf("%s: %d pulls beyond the %d syncs' own within two intervals of %v, want at most 2",
				tok, repeats, syncs, pt)
		}
	}
	// The one loop is alive: the server's silence is still answered by a repeat.
	for _, tok := range tokens {
		testkit.Eventually(t, waitFor, func() bool { return pulls(tok)-before[tok] > syncs },
			"%s: %s pulls after %d syncs, want a repeat besides them", tok, func() string { return fmt.Sprint(pulls(tok) - before[tok]) }, syncs)
	}
}
