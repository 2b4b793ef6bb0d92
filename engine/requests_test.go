package engine

import (
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/clock"
)

// requestsFor collects the requests the transport publishes while d passes on the engine's clock,
// by endpoint.
func (c *core) requestsFor(d time.Duration) map[string][]OutMsg {
	c.t.Helper()
	clk := clock.OrReal(c.opt.Clock)
	until := clk.Now().Add(d)
	got := map[string][]OutMsg{}
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	for clk.Now().Before(until) {
		select {
		case m := <-c.sent:
			if m.Request {
				got[m.Endpoint] = append(got[m.Endpoint], m)
			}
		case <-poll.C:
		}
	}
	return got
}

// nextRequest returns the next request published for endpoint key within testWait, and its id.
func (c *core) nextRequest(key string) (OutMsg, uint64) {
	c.t.Helper()
	deadline := time.After(testWait)
	for {
		select {
		case m := <-c.sent:
			if m.Request && m.Endpoint == key {
				return m, requestID(c.t, m)
			}
		case <-deadline:
			c.t.Fatalf("no request for %s within %s", key, testWait)
		}
	}
}

// requestID is the message id of a request: cmx3's {"id"}, cmp7's last topic level.
func requestID(t testing.TB, m OutMsg) uint64 {
	t.Helper()
	if strings.HasSuffix(m.Topic, "/pull/json") {
		var p struct{ ID uint64 }
		if err := json.Unmarshal(m.Payload, &p); err != nil || p.ID == 0 {
			t.Fatalf("pull %s: no id (%v)", m.Payload, err)
		}
		return p.ID
	}
	rid := m.Topic[strings.LastIndex(m.Topic, "/")+1:]
	id, err := strconv.ParseUint(rid, 10, 64)
	if !cmx.IsRequestID(rid) || err != nil {
		t.Fatalf("request topic %s: no request id", m.Topic)
	}
	return id
}

// Every sync sends one request now, but the repeats of an unanswered request stay one per
// endpoint: 20 syncs against a silent server must not make 21 loops that each repeat the request.
func TestRequests_ManySyncsAgainstASilentServerKeepOneRepeatLoopPerEndpoint(t *testing.T) {
	const pt = 500 * time.Millisecond
	c := startCoreWith(t, coreOptions{PullTimeout: pt, Clock: warp(t)}, config.Endpoint{Token: "gw"}, config.Endpoint{Token: "gw2"})
	c.nextRequest("gw")
	c.nextRequest("gw2")
	before := runtime.NumGoroutine()
	const syncs = 20
	for range syncs {
		if n, ok := c.e.Sync(); !ok || n != 2 {
			t.Fatalf("Sync = %d, %v; want 2 endpoints asked", n, ok)
		}
	}
	grown := runtime.NumGoroutine() - before
	// Over 10 intervals one loop repeats at most 10 times (fewer: its interval doubles); 21 loops
	// would repeat 21 times in each of the first intervals.
	const window = 10 * pt
	got := c.requestsFor(window)
	for _, key := range []string{"gw", "gw2"} {
		repeats := len(got[key]) - syncs
		if repeats < 1 || repeats > int(window/pt) {
			t.Errorf("%s: %d requests in the %v after %d syncs (%d beyond the syncs' own), want the syncs' plus 1 to %d repeats",
				key, len(got[key]), window, syncs, repeats, window/pt)
		}
	}
	if grown > 3 {
		t.Errorf("%d more goroutines after %d syncs, want none per sync", grown, syncs)
	}
}

// A request repeated after a refusal is a request like any other: unanswered, it is repeated after
// the pull timeout; and a sync meanwhile replaces the scheduled repeat instead of adding one.
func TestRequests_ARefusedRequestStaysInTheEndpointsOneLoop(t *testing.T) {
	t.Parallel()
	t.Run("its repeat is repeated when unanswered", func(t *testing.T) {
		const pt = 5 * time.Second
		clk := warp(t)
		c := startCoreWith(t, coreOptions{Dialect: config.DialectCMP7, PullTimeout: pt, Clock: clk}, config.Endpoint{Token: "gw"})
		m, _ := c.nextRequest("gw")
		waitReceipt(t, c.deliver(m.Topic+"/error", 1, `{"statusCode": 503, "reasonPhrase": "busy"}`))
		_, retried := c.nextRequest("gw") // after the backoff, 0.5 to 1 s
		sent := clk.Now()
		_, again := c.nextRequest("gw")
		if again <= retried {
			t.Errorf("request %d after %d, want a new id", again, retried)
		}
		if waited := clk.Now().Sub(sent); waited < pt*9/10 {
			t.Errorf("the unanswered repeat came %v after it, want the pull timeout %v", waited, pt)
		}
	})
	t.Run("a sync replaces its scheduled repeat", func(t *testing.T) {
		c := startCoreWith(t, coreOptions{Dialect: config.DialectCMP7, PullTimeout: time.Hour, Clock: warp(t)}, config.Endpoint{Token: "gw"})
		m, _ := c.nextRequest("gw")
		waitReceipt(t, c.deliver(m.Topic+"/error", 1, `{"statusCode": 503, "reasonPhrase": "busy"}`))
		c.waitLog("server refused the configuration request", 1)
		c.e.Sync()
		c.nextRequest("gw")
		// The refusal's repeat was due within 1 s; the sync's request waits an hour for its answer.
		got := c.requestsFor(5 * time.Second)
		if n := len(got["gw"]); n != 0 {
			t.Errorf("%d more requests after the sync, want none (the refusal's repeat was replaced)", n)
		}
	})
}
