package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/engine"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// The test plays the Kaa server: it reads the agent's requests and applied reports from kp1/# and
// publishes responses, as a 7/CMP server does.

// gatewayCMP7 is a gateway with two tokens, one of which also has a named configuration.
const gatewayCMP7 = `[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
[[endpoint]]
token = "gw-001"
name = "modbus"
output = "out/gw-001-modbus.json"
[[endpoint]]
token = "dev-002"
output = "out/dev-002.json"
`

func newCMP7Harness(t *testing.T) *harness {
	t.Helper()
	return newHarnessConfig(t, config.DialectCMP7, gatewayCMP7)
}

// cmp7Ep names one configuration of the gateway.
type cmp7Ep struct{ token, name string }

var (
	gwDefault = cmp7Ep{"gw-001", ""}
	gwModbus  = cmp7Ep{"gw-001", "modbus"}
	devEp     = cmp7Ep{"dev-002", ""}
)

func (h *harness) out7(e cmp7Ep) string {
	if e.name == "" {
		return h.output(e.token)
	}
	return filepath.Join(h.dir, "out", e.token+"-"+e.name+".json")
}

func (h *harness) key7(e cmp7Ep) string { return config.Endpoint{Token: e.token, Name: e.name}.Key() }

// route7 returns how the agent's side reads a topic of e's token.
func (h *harness) route7(e cmp7Ep, topic string) (cmx.ConfigRoute, bool) {
	rest, ok := strings.CutPrefix(topic, h.prefix(e.token)+"/")
	if !ok {
		return cmx.ConfigRoute{}, false
	}
	r := cmx.ParseConfigTopic(strings.Split(rest, "/"))
	return r, r.Name == e.name
}

// requested waits for the agent's next configuration request for e and returns its request id and
// payload; it must be QoS 1.
func (h *harness) requested(e cmp7Ep) (uint64, string) {
	h.t.Helper()
	m := h.all.NextMatching(h.t, waitFor, func(m mqtttest.Message) bool {
		r, ok := h.route7(e, m.Topic)
		return ok && r.Kind == cmx.TopicRequest
	})
	r, _ := h.route7(e, m.Topic)
	if m.QoS != 1 {
		h.t.Errorf("request %s: QoS %d, want 1", m.Topic, m.QoS)
	}
	if r.RequestID == 0 {
		h.t.Errorf("request %s has no request id", m.Topic)
	}
	return r.RequestID, string(m.Payload)
}

// respond publishes a response to request rid of e (rid 0: unsolicited, at the bare status topic).
func (h *harness) respond(e cmp7Ep, rid uint64, payload string) {
	h.t.Helper()
	h.server.Publish(h.t, cmx.StatusTopic(cmx.ConfigRequestTopic(h.prefix(e.token), e.name, rid)), 1, []byte(payload))
}

// applied waits for the agent's next applied report for e.
func (h *harness) applied(e cmp7Ep) (mqtttest.Message, cmx.Applied) {
	h.t.Helper()
	m := h.all.NextMatching(h.t, waitFor, func(m mqtttest.Message) bool { return h.isApplied(e, m) })
	a, err := cmx.ParseAppliedReport(m.Payload)
	if err != nil {
		h.t.Fatalf("applied report %s: %v", m.Payload, err)
	}
	if m.QoS != 1 {
		h.t.Errorf("applied report %s: QoS %d, want 1", m.Topic, m.QoS)
	}
	return m, a
}

func (h *harness) isApplied(e cmp7Ep, m mqtttest.Message) bool {
	rest, ok := strings.CutPrefix(m.Topic, h.prefix(e.token)+"/")
	if !ok {
		return false
	}
	name, _, ok := cmx.ParseAppliedTopic(strings.Split(rest, "/"))
	return ok && name == e.name
}

// count counts the messages received so far for which pred holds, consumed or not.
func (h *harness) count(pred func(mqtttest.Message) bool) int {
	n := 0
	for _, m := range h.all.All() {
		if pred(m) {
			n++
		}
	}
	return n
}

func (h *harness) appliedSoFar(e cmp7Ep) int {
	return h.count(func(m mqtttest.Message) bool { return h.isApplied(e, m) })
}

func (h *harness) requestsSoFar(e cmp7Ep) int {
	return h.count(func(m mqtttest.Message) bool {
		r, ok := h.route7(e, m.Topic)
		return ok && r.Kind == cmx.TopicRequest
	})
}

// quiet asserts that count stays at n for a while (absence can only be shown by waiting).
func (h *harness) quiet(what string, count func() int, n int) {
	h.t.Helper()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if got := count(); got != n {
			h.t.Fatalf("%s: %d messages, want %d:%v", what, got, n, h.all.All())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requestedAll waits for one request of each of eps, in whatever order they come, and returns their
// request ids and payloads.
func (h *harness) requestedAll(eps ...cmp7Ep) (map[cmp7Ep]uint64, map[cmp7Ep]string) {
	h.t.Helper()
	rids, payloads := map[cmp7Ep]uint64{}, map[cmp7Ep]string{}
	for len(rids) < len(eps) {
		m := h.all.NextMatching(h.t, waitFor, func(m mqtttest.Message) bool {
			for _, e := range eps {
				if r, ok := h.route7(e, m.Topic); ok && r.Kind == cmx.TopicRequest && rids[e] == 0 {
					return true
				}
			}
			return false
		})
		for _, e := range eps {
			if r, ok := h.route7(e, m.Topic); ok && r.Kind == cmx.TopicRequest {
				if m.QoS != 1 || r.RequestID == 0 {
					h.t.Errorf("request %v: want QoS 1 and a request id", m)
				}
				rids[e], payloads[e] = r.RequestID, string(m.Payload)
			}
		}
	}
	return rids, payloads
}

// waitServerState waits until e's server state satisfies ok, and returns it.
func (h *harness) waitServerState(e cmp7Ep, ok func(engine.ServerState) bool) engine.ServerState {
	h.t.Helper()
	var st engine.ServerState
	testkit.Eventually(h.t, waitFor, func() bool {
		st = h.serverState(e)
		return ok(st)
	}, "server state of %v never as wanted: last %s", e, func() string { return fmt.Sprintf("%+v", st) })
	return st
}

func (h *harness) serverState(e cmp7Ep) engine.ServerState {
	h.t.Helper()
	all, err := h.agent.eng.ServerStates()
	if err != nil {
		h.t.Fatal(err)
	}
	return all[h.key7(e)]
}

// startCMP7 starts the agent and collects the first request of each configuration of the gateway.
func (h *harness) startCMP7() map[cmp7Ep]uint64 {
	h.t.Helper()
	h.start()
	rids, payloads := h.requestedAll(gwDefault, gwModbus, devEp)
	for e, p := range payloads {
		if p != `{"observe":true}` {
			h.t.Errorf("first request of %v = %s, want {\"observe\":true}", e, p)
		}
	}
	return rids
}

func TestCMP7_GatewaySubscribesThenRequestsEachConfiguration(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()

	// The broker acknowledged the subscriptions before it received the first request, and the
	// named configuration of gw-001 rides on gw-001's own subscription (a second, overlapping one
	// would deliver each of its messages twice).
	cid := h.clientID()
	log := h.broker.Log()
	suback := strings.Index(log, "Sending SUBACK to "+cid)
	publish := strings.Index(log, "Received PUBLISH from "+cid)
	if suback < 0 || publish < 0 || suback > publish {
		t.Errorf("broker log: SUBACK at %d, first PUBLISH at %d; want the SUBACK first", suback, publish)
	}
	for _, f := range []string{"kp1/app-v1/cmx/gw-001/config/json/#", "kp1/app-v1/cmx/dev-002/config/json/#"} {
		if !strings.Contains(log, "\t"+f+" (QoS 1)") {
			t.Errorf("broker log has no subscription to %s at QoS 1", f)
		}
	}
	if strings.Contains(log, "config/json/modbus/#") {
		t.Errorf("agent subscribed to the named configuration separately")
	}

	bodies := map[cmp7Ep]string{
		gwDefault: `{"sampling_ms": 500}`,
		gwModbus:  `[{"unit": 1, "register": 40001}]`,
		devEp:     `"plain text config"`,
	}
	for e, body := range bodies {
		h.respond(e, rids[e], `{"configId":"`+e.token+e.name+`-1","config":`+body+`}`)
		m, a := h.applied(e)
		if a.ConfigID != e.token+e.name+"-1" || a.StatusCode != 200 || string(m.Payload) != `{"configId":"`+a.ConfigID+`","statusCode":200}` {
			t.Errorf("%v: applied report %s at %s", e, m.Payload, m.Topic)
		}
		if r, _ := h.route7(e, strings.Replace(m.Topic, "/applied/", "/config/", 1)); r.RequestID <= maxRID(rids) {
			t.Errorf("%v: applied report at %s, want a fresh request id", e, m.Topic)
		}
		h.waitFile(h.out7(e), []byte(body))
	}
	for e := range bodies {
		if ep := h.waitCounters(h.key7(e), func(s engine.EndpointStats) bool { return s.Ok >= 1 }); ep.Ok != 1 {
			t.Errorf("%v: applied %d times, want once", e, ep.Ok)
		}
	}
}

func TestCMP7_ResponseAtRequestTopicAndUnsolicitedAtBareStatus(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()
	h.respond(gwDefault, rids[gwDefault], `{"configId":"a1","config":{"v":1}}`)
	if _, a := h.applied(gwDefault); a.ConfigID != "a1" || !a.OK() {
		t.Errorf("report = %+v", a)
	}
	h.waitFile(h.out7(gwDefault), []byte(`{"v":1}`))

	// observe: later changes come unsolicited at the bare status topic.
	h.respond(gwDefault, 0, `{"configId":"a2","config":{"v":2}}`)
	if _, a := h.applied(gwDefault); a.ConfigID != "a2" || !a.OK() {
		t.Errorf("report = %+v", a)
	}
	h.waitFile(h.out7(gwDefault), []byte(`{"v":2}`))

	// The named configuration's bare status topic is also under gw-001's subscription: it goes to
	// the named configuration only.
	h.respond(gwModbus, 0, `{"configId":"m1","config":["modbus"]}`)
	if _, a := h.applied(gwModbus); a.ConfigID != "m1" || !a.OK() {
		t.Errorf("report = %+v", a)
	}
	h.waitFile(h.out7(gwModbus), []byte(`["modbus"]`))
	h.waitFile(h.out7(gwDefault), []byte(`{"v":2}`))
}

func TestCMP7_OwnRequestsAndOtherTopicsAreNotConfigurations(t *testing.T) {
	h := newCMP7Harness(t)
	h.startCMP7()
	cfgLike := []byte(`{"configId":"x","config":{"not":"for the agent"}}`)
	p := h.prefix("gw-001")
	for _, topic := range []string{
		p + "/config/json/99",              // a request of another client
		p + "/config/json",                 // a request without id, as Kaa's own clients send
		p + "/config/json/modbus/99",       // a request for the named configuration
		p + "/config/json/other/status",    // a configuration name this gateway does not have
		p + "/config/json/007/status",      // neither a request id nor a name
		p + "/config/json/99/status/extra", // levels 7/CMP does not have
		h.prefix("unknown") + "/config/json/status",
	} {
		h.server.Publish(t, topic, 1, cfgLike)
	}
	// A marker after them: once it is applied, the ones before were seen and ignored.
	h.respond(devEp, 0, `{"configId":"marker","config":1}`)
	if _, a := h.applied(devEp); a.ConfigID != "marker" {
		t.Fatalf("report = %+v", a)
	}
	h.quiet("gw-001 reports", func() int { return h.appliedSoFar(gwDefault) + h.appliedSoFar(gwModbus) }, 0)
	for _, e := range []cmp7Ep{gwDefault, gwModbus} {
		if _, err := os.Stat(h.out7(e)); !os.IsNotExist(err) {
			t.Errorf("%s exists (%v); nothing was meant for it", h.out7(e), err)
		}
	}
}

func TestCMP7_UnchangedDoesNothing(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()
	h.respond(gwDefault, rids[gwDefault], `{"configId":"u1","config":{"v":1}}`)
	h.applied(gwDefault)
	h.waitFile(h.out7(gwDefault), []byte(`{"v":1}`))
	before, _ := os.Stat(h.out7(gwDefault))

	h.respond(gwDefault, 0, `{}`)
	h.waitLog(`msg="configuration unchanged" endpoint=gw-001 `, 1)
	h.quiet("reports", func() int { return h.appliedSoFar(gwDefault) }, 1)
	after, _ := os.Stat(h.out7(gwDefault))
	if !after.ModTime().Equal(before.ModTime()) || !os.SameFile(before, after) {
		t.Errorf("output was rewritten by {}")
	}
	if n := strings.Count(h.logs.String(), "configuration applied"); n != 1 {
		t.Errorf("applied %d times, want 1", n)
	}
}

func TestCMP7_NoneAssignedLeavesTheFileAndIsRecorded(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()
	h.respond(gwModbus, rids[gwModbus], `{"configId":"n1","config":{"v":1}}`)
	h.applied(gwModbus)
	h.waitFile(h.out7(gwModbus), []byte(`{"v":1}`))

	h.respond(gwModbus, 0, `{"configId":"","config":null}`)
	st := h.waitServerState(gwModbus, func(st engine.ServerState) bool { return st.NoneAssigned })
	h.quiet("reports", func() int { return h.appliedSoFar(gwModbus) }, 1)
	h.waitFile(h.out7(gwModbus), []byte(`{"v":1}`))
	if !st.NoneAssigned || st.NoneAssignedAt.IsZero() {
		t.Errorf("server state = %+v, want none assigned", st)
	}
	if st := h.serverState(gwDefault); st.NoneAssigned {
		t.Errorf("the default configuration of the same token is marked none assigned too")
	}

	// A configuration later ends "none assigned".
	h.respond(gwModbus, 0, `{"configId":"n2","config":{"v":2}}`)
	h.applied(gwModbus)
	// The report may be published before the result is committed (its configuration is still
	// unacknowledged then): wait for the commit.
	if st := h.waitServerState(gwModbus, func(st engine.ServerState) bool { return !st.NoneAssigned }); st.NoneAssigned {
		t.Errorf("server state = %+v after a new configuration", st)
	}
}

func TestCMP7_MissingPairIsReported400AndChangesNothing(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()
	h.respond(devEp, rids[devEp], `{"configId":"good","config":["good"]}`)
	h.applied(devEp)
	h.waitFile(h.out7(devEp), []byte(`["good"]`))

	cases := []struct{ payload, want string }{
		{`{"configId":"c9"}`, `{"configId":"c9","statusCode":400,"reasonPhrase":"invalid payload: config missing (configId and config come together)"}`},
		{`{"config":{"a":1}}`, `{"configId":"","statusCode":400,"reasonPhrase":"invalid payload: configId missing (configId and config come together)"}`},
		{`{"configId":5,"config":1}`, `{"configId":"","statusCode":400,"reasonPhrase":"invalid payload: configId must be a string, got number"}`},
		{`not json`, `{"configId":"","statusCode":400,"reasonPhrase":"invalid payload: not JSON: invalid character 'o' in literal null (expecting 'u')"}`},
	}
	for _, tc := range cases {
		h.respond(devEp, 0, tc.payload)
		if m, _ := h.applied(devEp); string(m.Payload) != tc.want {
			t.Errorf("response %s: report %s, want %s", tc.payload, m.Payload, tc.want)
		}
		h.waitFile(h.out7(devEp), []byte(`["good"]`))
	}
	// The configId of a refused response is not remembered as handled: with its config it applies.
	h.respond(devEp, 0, `{"configId":"c9","config":["c9"]}`)
	if _, a := h.applied(devEp); a.ConfigID != "c9" || !a.OK() {
		t.Errorf("report = %+v", a)
	}
	h.waitFile(h.out7(devEp), []byte(`["c9"]`))
}

func TestCMP7_ExtraFieldsAreTolerated(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()
	h.respond(gwDefault, rids[gwDefault], `{"id":7,"statusCode":200,"reasonPhrase":"OK","configId":"e1","config":{"k":"v"}}`)
	if m, a := h.applied(gwDefault); a.ConfigID != "e1" || string(m.Payload) != `{"configId":"e1","statusCode":200}` {
		t.Errorf("report %s", m.Payload)
	}
	h.waitFile(h.out7(gwDefault), []byte(`{"k":"v"}`))
}

func TestCMP7_DuplicateConfigIDIsReportedAgainNotApplied(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()
	h.respond(gwDefault, rids[gwDefault], `{"configId":"d1","config":["first"]}`)
	h.applied(gwDefault)
	h.respond(gwDefault, 0, `{"configId":"d1","config":["second"]}`)
	if m, a := h.applied(gwDefault); a.ConfigID != "d1" || !a.OK() {
		t.Errorf("report again = %s", m.Payload)
	}
	h.waitFile(h.out7(gwDefault), []byte(`["first"]`))
	if n := strings.Count(h.logs.String(), "configuration applied"); n != 1 {
		t.Errorf("applied %d times, want 1", n)
	}
}

func TestCMP7_ErrorIsRecordedAndTheRequestRepeatedWithBackoff(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()
	rid := rids[devEp]
	// Each refusal doubles the wait: [0.5 s, 1 s] after the first, [1 s, 2 s] after the second.
	for i, min := range []time.Duration{500 * time.Millisecond, time.Second} {
		sent := time.Now()
		h.server.Publish(t, cmx.ErrorTopic(cmx.ConfigRequestTopic(h.prefix(devEp.token), "", rid)), 1,
			[]byte(`{"statusCode":404,"reasonPhrase":"Endpoint not found"}`))
		next, payload := h.requested(devEp)
		waited := time.Since(sent)
		if waited < min-50*time.Millisecond || waited > 2*min+3*time.Second {
			t.Errorf("refusal %d: asked again after %v, want %v to %v plus slack", i+1, waited, min, 2*min)
		}
		if next <= rid || payload != `{"observe":true}` {
			t.Errorf("repeated request %d %s, want a new id > %d and {\"observe\":true}", next, payload, rid)
		}
		rid = next
		if st := h.serverState(devEp); st.ErrorCode != 404 || st.ErrorReason != "Endpoint not found" || st.Errors != i+1 {
			t.Errorf("server state = %+v", st)
		}
	}
	// Other endpoints were not disturbed.
	if st := h.serverState(gwDefault); st.ErrorCode != 0 {
		t.Errorf("gw-001 server state = %+v", st)
	}

	h.respond(devEp, rid, `{"configId":"after-error","config":1}`)
	h.applied(devEp)
	if st := h.waitServerState(devEp, func(st engine.ServerState) bool { return st.ErrorCode == 0 && st.Errors == 0 }); st.ErrorCode != 0 || st.Errors != 0 {
		t.Errorf("server state = %+v after a configuration, want the error cleared", st)
	}
	// An error for an older request does not start another round: a newer request is out.
	h.server.Publish(t, cmx.ErrorTopic(cmx.ConfigRequestTopic(h.prefix(devEp.token), "", rids[devEp])), 1,
		[]byte(`{"statusCode":500,"reasonPhrase":"late"}`))
	h.waitLog("server refused an earlier configuration request", 1)
	h.quiet("dev-002 requests", func() int { return h.requestsSoFar(devEp) }, 3)
}

func TestCMP7_BrokerRestart_RequestCarriesTheAppliedConfigID(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()
	h.respond(gwModbus, rids[gwModbus], `{"configId":"applied-1","config":{"v":1}}`)
	h.applied(gwModbus)
	h.broker.Restart(t)
	again, got := h.requestedAll(gwDefault, gwModbus, devEp)
	for e, rid := range again {
		if rid <= maxRID(rids) {
			t.Errorf("%v: request id after reconnect = %d, want > %d", e, rid, maxRID(rids))
		}
	}
	want := map[cmp7Ep]string{
		gwDefault: `{"observe":true}`,
		gwModbus:  `{"observe":true,"configId":"applied-1"}`,
		devEp:     `{"observe":true}`,
	}
	for e, w := range want {
		if got[e] != w {
			t.Errorf("%v: request after reconnect = %s, want %s", e, got[e], w)
		}
	}
}

func TestCMP7_WriteFailureIsReported500AndNotNamedInRequests(t *testing.T) {
	h := newHarnessConfig(t, config.DialectCMP7, "[[endpoint]]\ntoken = \"dev-002\"\noutput = \"blocker/dev-002.json\"\n")
	if err := os.WriteFile(filepath.Join(h.dir, "blocker"), []byte("a file, not a folder"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.start()
	rid, _ := h.requested(devEp)
	h.respond(devEp, rid, `{"configId":"w1","config":1}`)
	m, a := h.applied(devEp)
	if a.ConfigID != "w1" || a.StatusCode != 500 || !strings.HasPrefix(a.ReasonPhrase, "write failed: ") {
		t.Errorf("report %s, want statusCode 500 with the write error", m.Payload)
	}
	h.broker.Restart(t)
	if _, payload := h.requested(devEp); payload != `{"observe":true}` {
		t.Errorf("request after a failed apply = %s, want no configId", payload)
	}
}

func TestCMP7_UnsentAppliedReportIsSentAfterRestart(t *testing.T) {
	h := newCMP7Harness(t)
	paused := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	h.pause = func(step string) {
		if step == StepRenamed {
			once.Do(func() {
				close(paused)
				<-release
			})
		}
	}
	rids := h.startCMP7()
	h.respond(gwModbus, rids[gwModbus], `{"configId":"r1","config":{"v":1}}`)
	<-paused
	// The file is in place; the broker goes away before the result is committed, so the report
	// cannot leave before the agent stops.
	h.broker.Stop(t)
	close(release)
	var out []engine.OutMsg
	testkit.Eventually(t, waitFor, func() bool {
		out = h.agent.eng.Outbox().Waiting()
		return len(out) == 1
	}, "outbox = %s, want the applied report", func() string { return fmt.Sprint(out) })
	if out[0].QoS != 1 || string(out[0].Payload) != `{"configId":"r1","statusCode":200}` {
		t.Fatalf("outbox = %+v", out[0])
	}
	h.stop()
	h.pause = nil
	h.broker.Start(t)
	h.start()
	m, a := h.applied(gwModbus)
	if a.ConfigID != "r1" || !a.OK() || m.QoS != 1 {
		t.Errorf("report after restart %v", m)
	}
	h.waitFile(h.out7(gwModbus), []byte(`{"v":1}`))
	// The restarted agent names the applied configuration (its request may go out before or after
	// the report).
	named := func() int {
		return h.count(func(m mqtttest.Message) bool {
			r, ok := h.route7(gwModbus, m.Topic)
			return ok && r.Kind == cmx.TopicRequest && string(m.Payload) == `{"observe":true,"configId":"r1"}`
		})
	}
	testkit.Eventually(t, waitFor, func() bool { return named() > 0 }, "no request after restart names r1")
	testkit.Eventually(t, waitFor, func() bool { return len(h.agent.eng.Outbox().Waiting()) == 0 },
		"the report is still in the outbox: %s", func() string { return fmt.Sprint(h.agent.eng.Outbox().Waiting()) })
}

// TestGateway_SameConfigInBothDialects runs one gateway configuration (two tokens) in each dialect:
// only kaa.dialect differs.
func TestGateway_SameConfigInBothDialects(t *testing.T) {
	const gateway = "[[endpoint]]\ntoken = \"gw-001\"\noutput = \"out/gw-001.json\"\n[[endpoint]]\ntoken = \"dev-002\"\noutput = \"out/dev-002.json\"\n"
	t.Run(config.DialectCMX3, func(t *testing.T) {
		h := newHarnessConfig(t, config.DialectCMX3, gateway)
		h.start()
		h.pulled("gw-001")
		for _, tok := range []string{"gw-001", "dev-002"} {
			topic := h.prefix(tok) + "/json"
			h.server.Publish(t, topic, 1, []byte(`{"id":"`+tok+`","entries":[1]}`))
			if m, c := h.confirmed(topic + "/status"); status(t, c) != "ok" || m.QoS != 1 {
				t.Errorf("%s: confirmation %v", tok, m)
			}
			h.waitFile(h.output(tok), []byte(`[1]`))
		}
	})
	t.Run(config.DialectCMP7, func(t *testing.T) {
		h := newHarnessConfig(t, config.DialectCMP7, gateway)
		h.start()
		rids, _ := h.requestedAll(cmp7Ep{"gw-001", ""}, cmp7Ep{"dev-002", ""})
		for _, tok := range []string{"gw-001", "dev-002"} {
			e := cmp7Ep{tok, ""}
			h.respond(e, rids[e], `{"configId":"`+tok+`","config":[1]}`)
			if m, a := h.applied(e); a.ConfigID != tok || !a.OK() {
				t.Errorf("%s: applied report %v", tok, m)
			}
			h.waitFile(h.output(tok), []byte(`[1]`))
		}
	})
}

// The reports' payloads are what the contract shows, byte for byte.
func TestCMP7_AppliedReportShape(t *testing.T) {
	var r map[string]json.RawMessage
	if err := json.Unmarshal(cmx.AppliedReport("c", 422, "validate exited 1"), &r); err != nil {
		t.Fatal(err)
	}
	if string(r["statusCode"]) != "422" || len(r) != 3 {
		t.Errorf("report %v: statusCode must be an integer, three fields", r)
	}
}

func maxRID(rids map[cmp7Ep]uint64) uint64 {
	var m uint64
	for _, r := range rids {
		m = max(m, r)
	}
	return m
}

func TestCMP7_ServerGoingBackToAnEarlierConfigIDIsApplied(t *testing.T) {
	h := newCMP7Harness(t)
	rids := h.startCMP7()
	h.respond(gwDefault, rids[gwDefault], `{"configId":"x1","config":["one"]}`)
	h.applied(gwDefault)
	h.respond(gwDefault, 0, `{"configId":"x2","config":["two"]}`)
	h.applied(gwDefault)
	h.waitFile(h.out7(gwDefault), []byte(`["two"]`))
	// A rollback on the server: x1 was applied once, is no longer the applied one, so it applies.
	h.respond(gwDefault, 0, `{"configId":"x1","config":["one"]}`)
	if m, a := h.applied(gwDefault); a.ConfigID != "x1" || !a.OK() {
		t.Errorf("report = %s, want x1 applied", m.Payload)
	}
	h.waitFile(h.out7(gwDefault), []byte(`["one"]`))
}

// holdWrite makes the first write after arm stop at StepSynced until release is closed. Call it
// before start: the agent takes its pause hook when it is made.
func (h *harness) holdWrite() (arm func(), blocked, release chan struct{}) {
	blocked, release = make(chan struct{}), make(chan struct{})
	var (
		once  sync.Once
		armed atomic.Bool
	)
	h.pause = func(step string) {
		if step == StepSynced && armed.Load() {
			once.Do(func() {
				close(blocked)
				<-release
			})
		}
	}
	return func() { armed.Store(true) }, blocked, release
}

func TestCMP7_SupersededConfigIDSentAgainIsApplied(t *testing.T) {
	h := newCMP7Harness(t)
	arm, blocked, release := h.holdWrite()
	arm()
	rids := h.startCMP7()
	h.respond(gwDefault, rids[gwDefault], `{"configId":"z","config":["z"]}`)
	<-blocked // z is being written
	h.respond(gwDefault, 0, `{"configId":"a","config":["a"]}`)
	h.waitCounters(h.key7(gwDefault), func(s engine.EndpointStats) bool { return s.Received >= 2 }) // z, a
	h.respond(gwDefault, 0, `{"configId":"b","config":["b"]}`)                                      // a is superseded, never applied
	h.waitCounters(h.key7(gwDefault), func(s engine.EndpointStats) bool { return s.Superseded >= 1 })
	close(release)
	h.waitFile(h.out7(gwDefault), []byte(`["b"]`))
	// The operator goes back to a: it was never applied, so it is applied now.
	h.respond(gwDefault, 0, `{"configId":"a","config":["a"]}`)
	h.waitFile(h.out7(gwDefault), []byte(`["a"]`))
}

func TestCMP7_AppliedConfigIDSentAgainWhileAnotherIsPendingWins(t *testing.T) {
	h := newCMP7Harness(t)
	arm, blocked, release := h.holdWrite()
	rids := h.startCMP7()
	h.respond(gwDefault, rids[gwDefault], `{"configId":"a","config":["a"]}`)
	h.waitFile(h.out7(gwDefault), []byte(`["a"]`))
	arm()
	h.respond(gwDefault, 0, `{"configId":"b","config":["b"]}`)
	<-blocked // b is being written
	// The server went back to a.
	h.respond(gwDefault, 0, `{"configId":"a","config":["a"]}`)
	h.waitCounters(h.key7(gwDefault), func(s engine.EndpointStats) bool { return s.Received >= 3 }) // a, b, a
	close(release)
	// The newest message said a: the file ends on a, not on b.
	h.waitLog(`msg="configuration applied" endpoint=gw-001 id=a`, 2)
	h.waitFile(h.out7(gwDefault), []byte(`["a"]`))
}
