package main

import (
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// newCMP7CrashEnv is newCrashEnv for a named 7/CMP configuration.
func newCMP7CrashEnv(t *testing.T) *crashEnv {
	t.Helper()
	return newCrashEnvWith(t, "dialect = \"cmp7\"\n", `[[endpoint]]
token = "gw-001"
name = "modbus"
output = "out/modbus.json"
`, "modbus.json")
}

// waitRequest waits for the agent's next request for the modbus configuration and returns its topic
// and payload.
func (e *crashEnv) waitRequest(t *testing.T) (string, string) {
	t.Helper()
	m := e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool {
		rest, ok := strings.CutPrefix(m.Topic, e.prefix+"/")
		r := cmx.ParseConfigTopic(strings.Split(rest, "/"))
		return ok && r.Kind == cmx.TopicRequest && r.Name == "modbus"
	})
	return m.Topic, string(m.Payload)
}

func (e *crashEnv) waitApplied(t *testing.T) cmx.Applied {
	t.Helper()
	m := e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool {
		return strings.HasPrefix(m.Topic, e.prefix+"/applied/json/modbus/")
	})
	if m.QoS != 1 {
		t.Errorf("applied report QoS = %d, want 1", m.QoS)
	}
	a, err := cmx.ParseAppliedReport(m.Payload)
	if err != nil {
		t.Fatalf("applied report %s: %v", m.Payload, err)
	}
	return a
}

func TestCrashCMP7_AtEachStepTheConfigIsAppliedAndReported(t *testing.T) {
	for _, step := range []string{agent.StepReceived, agent.StepSynced, agent.StepRenamed, agent.StepCommitted} {
		t.Run(step, func(t *testing.T) {
			e := newCMP7CrashEnv(t)
			p := startAgent(t, e.config, "CMX_AGENT_TEST_PAUSE="+step)
			topic, _ := e.waitRequest(t)
			e.server.Publish(t, cmx.StatusTopic(topic), 1, []byte(`{"configId":"k1","config":{"v":1}}`))
			p.waitLine(t, "test pause at "+step)
			p.kill(t)

			p = startAgent(t, e.config)
			if a := e.waitApplied(t); a.ConfigID != "k1" || !a.OK() {
				t.Errorf("applied report after restart = %+v", a)
			}
			e.checkFile(t, `{"v":1}`)
			p.waitLine(t, "answer delivered")
		})
	}
}
