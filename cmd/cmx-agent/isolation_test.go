package main

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// The isolation tests show from the outside, on the real binary and mosquitto, that one endpoint's
// slow work does not hold up another's, and that an answer never claims what is not true now
// (CONTRACT.md section 3, "rules for both").

// isolationWait bounds each wait for something the agent must do at once. The behaviour these tests
// guard against waits forever, so the bound only has to be long enough for a loaded machine.
const isolationWait = 10 * time.Second

// prefixOf is the topic prefix of the endpoint with token in the crash tests' application.
func prefixOf(token string) string { return "kp1/" + crashApp + "/cmx/" + token }

// waitMessage waits for the next message on topic and fails unless it came at QoS 1 with payload
// want.
func (e *crashEnv) waitMessage(t *testing.T, topic, want string) {
	t.Helper()
	e.waitMessages(t, map[string]string{topic: want})
}

// waitMessages waits for one message on each topic of want, in any order, and fails unless each
// came at QoS 1 with the payload want names for its topic.
func (e *crashEnv) waitMessages(t *testing.T, want map[string]string) {
	t.Helper()
	left := maps.Clone(want)
	for len(left) > 0 {
		m := e.all.NextMatching(t, isolationWait, func(m mqtttest.Message) bool { _, ok := left[m.Topic]; return ok })
		if string(m.Payload) != left[m.Topic] || m.QoS != 1 {
			t.Errorf("%s: %q at QoS %d, want %q at QoS 1", m.Topic, m.Payload, m.QoS, left[m.Topic])
		}
		delete(left, m.Topic)
	}
}

// wantFile fails unless path holds want now: a configuration confirmed ok is in place.
func wantFile(t *testing.T, path, want string) {
	t.Helper()
	if got, err := os.ReadFile(path); err != nil || string(got) != want {
		t.Errorf("%s = %q (%v), want %q", path, got, err, want)
	}
}

// waitEntries waits until the folder dir holds at least n entries.
func waitEntries(t *testing.T, dir string, n int) {
	t.Helper()
	var entries []os.DirEntry
	testkit.Eventually(t, isolationWait, func() bool {
		entries, _ = os.ReadDir(dir)
		return len(entries) >= n
	}, "%s holds %s entries, want %d", dir, func() string { return fmt.Sprint(len(entries)) }, n)
}

// The 16 process slots bound the validate and hook commands running at once; an endpoint without
// either takes none, so 17 hooks that never end hold up the 17th hook, and nothing else.
func TestIsolation_SlowHooksOnManyEndpointsDoNotDelayAnEndpointWithoutOne(t *testing.T) {
	const slots = 16
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	started := filepath.Join(dir, "started")
	if err := os.Mkdir(started, 0o755); err != nil {
		t.Fatal(err)
	}
	// The hooks outlive a killed agent: however the test ends, the gate opens and they exit.
	t.Cleanup(func() { os.WriteFile(gate, nil, 0o644) })
	var (
		hooked    []string
		endpoints strings.Builder
	)
	for i := range slots + 1 {
		token := fmt.Sprintf("gw-%03d", i+1)
		hooked = append(hooked, token)
		// Each hook marks its start (one file per endpoint), then waits for the gate.
		fmt.Fprintf(&endpoints, "[[endpoint]]\ntoken = %q\noutput = \"out/%s.json\"\nhook_timeout = \"10m\"\n"+
			"hook = [\"sh\", \"-c\", 'touch \"$0/$CMX_TOKEN\"; while [ ! -e \"$1\" ]; do sleep 0.05; done', %q, %q]\n",
			token, token, started, gate)
	}
	endpoints.WriteString("[[endpoint]]\ntoken = \"quick\"\noutput = \"out/quick.json\"\n")
	e := newCrashEnvWith(t, "", endpoints.String(), "quick.json")
	startAgent(t, e.config)
	for _, token := range append(hooked, "quick") {
		e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return m.Topic == prefixOf(token)+"/pull/json" })
	}

	for i, token := range hooked {
		e.server.Publish(t, prefixOf(token)+"/json", 1, []byte(fmt.Sprintf(`{"id":%d,"entries":[%d]}`, i+1, i+1)))
	}
	waitEntries(t, started, slots) // every slot taken by a hook that waits for the gate

	e.server.Publish(t, prefixOf("quick")+"/json", 1, []byte(`{"id":"q1","entries":["quick"]}`))
	e.waitMessage(t, prefixOf("quick")+"/json/status", `{"id":"q1","status":"ok"}`)
	wantFile(t, filepath.Join(e.dir, "out", "quick.json"), `["quick"]`)
	// The gate was never opened, so no hook ended: the 17th still waits for a slot.
	if entries, _ := os.ReadDir(started); len(entries) != slots {
		t.Errorf("%d hooks started with the gate closed, want %d (the process slots)", len(entries), slots)
	}

	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i, token := range hooked {
		want[prefixOf(token)+"/json/status"] = fmt.Sprintf(`{"id":%d,"status":"ok"}`, i+1)
	}
	e.waitMessages(t, want)
	for i, token := range hooked {
		wantFile(t, filepath.Join(e.dir, "out", token+".json"), fmt.Sprintf("[%d]", i+1))
	}
}

// sentPublish is mosquitto's log line (log_type all) for a QoS 1 PUBLISH it sends the agent.
var sentPublish = regexp.MustCompile(`Sending PUBLISH to crash-agent \(d\d, q1, r\d, m(\d+), '([^']*)'`)

// brokerSent returns the message ids of the QoS 1 PUBLISHes the broker sent the agent on topic.
func brokerSent(b *mqtttest.Broker, topic string) []string {
	var mids []string
	for _, m := range sentPublish.FindAllStringSubmatch(b.Log(), -1) {
		if m[2] == topic {
			mids = append(mids, m[1])
		}
	}
	return mids
}

// The held path (QoS 1, persistent session, no validate or hook) holds the PUBACK until the result
// is committed, and PUBACKs go out in arrival order: an apply that does not end would hold every
// later PUBACK of the connection. The test pause stops the apply after its temporary file is written
// (synced) for as long as the process lives; the PUBACK must reach the broker anyway, after the
// hold bound, and the configuration, stored then, is applied after a restart without the broker
// sending it again.
func TestIsolation_AHeldPUBACKIsReleasedAtTheBound(t *testing.T) {
	e := newCrashEnv(t)
	p := startAgent(t, e.config, "CMX_AGENT_TEST_PAUSE="+agent.StepSynced)
	e.waitPull(t)
	push := e.prefix + "/json"
	e.server.Publish(t, push, 1, []byte(`{"id":"c1","entries":[1]}`))
	p.waitLine(t, "test pause at "+agent.StepSynced)

	mids := brokerSent(e.broker, push)
	if len(mids) != 1 {
		t.Fatalf("broker sent the push %d times (mids %q), want once", len(mids), mids)
	}
	e.broker.WaitLog(t, "Received PUBACK from crash-agent (Mid: "+mids[0]+",", 1, isolationWait)
	// It was held (the committed path would have acknowledged it at once, proving nothing): the
	// hold's release is counted only inside the engine, so its log line says so.
	p.waitLine(t, `msg="apply takes longer than the hold bound: configuration stored and acknowledged" endpoint=gw-001 id=c1`)
	// The apply never went past synced: the PUBACK went before its end.
	if _, err := os.Stat(e.output); !os.IsNotExist(err) {
		t.Errorf("output exists (%v) while the apply is paused before the rename", err)
	}
	p.kill(t)

	startAgent(t, e.config)
	if s := e.waitConfirmation(t, `"c1"`); s != "ok" {
		t.Errorf("status after restart = %q, want ok", s)
	}
	e.checkFile(t, `[1]`)
	// Acknowledged, so the broker forgot it: the restarted agent applied the stored offer.
	if mids := brokerSent(e.broker, push); len(mids) != 1 {
		t.Errorf("broker sent the push %d times (mids %q), want once", len(mids), mids)
	}
}

// cmx3: a handled id is answered with what is true now. An ok for a configuration no longer in
// place is "superseded by" the one in place; the same id answering the agent's own pull is the
// server's latest word and is applied again.
func TestIsolation_AnIDNoLongerInPlaceIsAnsweredSuperseded(t *testing.T) {
	e := newCrashEnv(t)
	startAgent(t, e.config)
	m := e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return m.Topic == e.prefix+"/pull/json" })
	pull, err := cmx.ParsePullRequest(m.Payload)
	if err != nil {
		t.Fatalf("pull %q: %v", m.Payload, err)
	}
	push, status := e.prefix+"/json", e.prefix+"/json/status"

	e.server.Publish(t, push, 1, []byte(`{"id":1,"entries":["one"]}`))
	e.waitMessage(t, status, `{"id":1,"status":"ok"}`)
	e.server.Publish(t, push, 1, []byte(`{"id":2,"entries":["two"]}`))
	e.waitMessage(t, status, `{"id":2,"status":"ok"}`)
	e.checkFile(t, `["two"]`)

	e.server.Publish(t, push, 1, []byte(`{"id":1,"entries":["one"]}`))
	e.waitMessage(t, status, `{"id":1,"status":"superseded by 2"}`)
	e.checkFile(t, `["two"]`)

	answer := cmx.PushTopic(e.prefix, pull)
	e.server.Publish(t, answer, 1, []byte(`{"id":1,"entries":["one"]}`))
	e.waitMessage(t, answer+"/status", `{"id":1,"status":"ok"}`)
	e.checkFile(t, `["one"]`)
}

// cmp7: an applied report waiting in the outbox gives way to a newer configuration's, but a
// configId handled before and reported again must not take the place of the report of the
// configuration applied since. The test pause at published stops the agent's publishing once the
// first report is acknowledged, so the later reports wait in the outbox until a restart sends what
// it holds.
func TestIsolation_CMP7ReconfirmedOldConfigIDKeepsTheNewerReport(t *testing.T) {
	e := newCrashEnvWith(t, "dialect = \"cmp7\"\n", `[[endpoint]]
token = "gw-001"
name = "modbus"
output = "out/modbus.json"
validate = ["sh", "-c", 'if grep -q bad "$CMX_CANDIDATE"; then echo refused >&2; exit 1; fi']
`, "modbus.json")
	p := startAgent(t, e.config, "CMX_AGENT_TEST_PAUSE="+agent.StepPublished)
	e.waitRequest(t)
	unsolicited := e.prefix + "/config/json/modbus/status"

	e.server.Publish(t, unsolicited, 1, []byte(`{"configId":"c1","config":["bad"]}`))
	if a := e.waitApplied(t); a.ConfigID != "c1" || a.StatusCode != 422 {
		t.Fatalf("first report %+v, want c1 422", a)
	}
	p.waitLine(t, "test pause at "+agent.StepPublished)
	e.server.Publish(t, unsolicited, 1, []byte(`{"configId":"c2","config":["good"]}`))
	p.waitLine(t, `msg="configuration applied" endpoint=gw-001/modbus id=c2`)
	e.server.Publish(t, unsolicited, 1, []byte(`{"configId":"c1","config":["bad"]}`))
	p.waitLine(t, `msg="duplicate id confirmed again" endpoint=gw-001/modbus id=c1`)
	p.kill(t)

	startAgent(t, e.config)
	got := map[string]int{}
	for got["c2"] == 0 || got["c1"] == 0 {
		a := e.waitApplied(t)
		got[a.ConfigID] = a.StatusCode
	}
	if got["c2"] != 200 || got["c1"] != 422 {
		t.Errorf("reports after restart %v, want c2 200 (the configuration in place) and c1 422", got)
	}
	e.checkFile(t, `["good"]`)
}
