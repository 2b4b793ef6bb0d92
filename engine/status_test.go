package engine

import (
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/store"
)

// endpointStatus returns the status of the endpoint with key.
func (c *core) endpointStatus(key string) EndpointStatus {
	c.t.Helper()
	eps, err := c.e.Endpoints()
	if err != nil {
		c.t.Fatal(err)
	}
	for _, es := range eps {
		if es.Key == key {
			return es
		}
	}
	c.t.Fatalf("no endpoint %s in %+v", key, eps)
	return EndpointStatus{}
}

// Status shows the last answer sent, whatever it said: a refused push and a re-confirmation
// replace the "ok" of the configuration applied before, and the applied one stays named as such;
// also after a restart (the answer is committed, not only in memory).
func TestStatus_LastAnswerIsShownForRefusalsAndReconfirmations(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		then     func(c *core) confirmation
		lastID   string
		status   string
		code     int
		appliedI string
	}{
		{"a refused push", func(c *core) confirmation {
			return c.send(Message{Topic: p + "/json", QoS: 1, Payload: []byte(`{"id":2,"entries":{"a":1}}`)})
		}, "2", "invalid payload: entries must be an array, got object", int(store.CodeInvalid), "1"},
		{"a refused push on the stored path (QoS 0)", func(c *core) confirmation {
			return c.send(Message{Topic: p + "/json", QoS: 0, Payload: []byte(`not json`)})
		}, "", "invalid payload", int(store.CodeInvalid), "1"},
		{"an old id confirmed again", func(c *core) confirmation {
			wantStatus(t, c.push(`3`, `["three"]`), "ok")
			return c.push(`1`, `["one"]`)
		}, "1", "superseded by 3", int(store.CodeSuperseded), "3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := startCore(t, config.DialectCMX3, nil, config.Endpoint{Token: "gw"})
			wantStatus(t, c.push(`1`, `["one"]`), "ok")
			conf := tc.then(c)
			if !strings.HasPrefix(conf.Status, tc.status) {
				t.Fatalf("answer %q, want it to begin with %q", conf.Status, tc.status)
			}
			check := func(when string) {
				t.Helper()
				es := c.endpointStatus("gw")
				if es.LastID != tc.lastID || es.LastStatus != conf.Status || es.LastCode != tc.code || es.LastOK {
					t.Errorf("%s: last %q %q code %d ok %v; want %q %q code %d, not ok", when,
						es.LastID, es.LastStatus, es.LastCode, es.LastOK, tc.lastID, conf.Status, tc.code)
				}
				if !es.Applied || es.AppliedID != tc.appliedI {
					t.Errorf("%s: applied %v %q, want %q still applied", when, es.Applied, es.AppliedID, tc.appliedI)
				}
			}
			check("at once")
			c.restart()
			check("after a restart")
		})
	}
}

// A request the server does not answer shows as waiting since it was first sent, through its
// repeats; an answer ends the wait.
func TestStatus_RequestWaitingSinceShowsAnUnansweredRequest(t *testing.T) {
	t.Parallel()
	c := startCoreWith(t, coreOptions{PullTimeout: 30 * time.Millisecond}, config.Endpoint{Token: "gw"})
	before := time.Now()
	c.nextRequest("gw")
	c.nextRequest("gw") // repeated: still unanswered
	es := c.endpointStatus("gw")
	if es.RequestWaitingSince.IsZero() || es.RequestWaitingSince.Before(before.Add(-time.Second)) || es.RequestWaitingSince.After(time.Now()) {
		t.Fatalf("request_waiting_since = %v, want the time of the first request (after %v)", es.RequestWaitingSince, before)
	}
	first := es.RequestWaitingSince
	c.nextRequest("gw")
	if got := c.endpointStatus("gw").RequestWaitingSince; !got.Equal(first) {
		t.Errorf("after another repeat: waiting since %v, want still %v", got, first)
	}
	wantStatus(t, c.push(`1`, `["one"]`), "ok")
	if got := c.endpointStatus("gw").RequestWaitingSince; !got.IsZero() {
		t.Errorf("after an answer: waiting since %v, want none", got)
	}
}
