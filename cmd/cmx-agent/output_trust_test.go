package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// A FIFO at one endpoint's output used to block that endpoint's apply for good, and with it the
// agent's stop. The real binary, a real broker: the other endpoint is still applied and confirmed,
// the FIFO's endpoint gets an error status naming it, and SIGTERM still ends the agent at once.
func TestRun_FIFOAtOneOutputStallsNeitherTheOtherEndpointNorTheStop(t *testing.T) {
	e := newCrashEnvWith(t, "", `[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
[[endpoint]]
token = "gw-002"
output = "out/gw-002.json"
`, "gw-001.json")
	if err := os.MkdirAll(filepath.Dir(e.output), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(e.output, 0o644); err != nil {
		t.Fatal(err)
	}
	prefix2 := "kp1/" + crashApp + "/cmx/gw-002"
	status1 := e.server.Subscribe(t, e.prefix+"/json/status", 1)
	status2 := e.server.Subscribe(t, prefix2+"/json/status", 1)
	p := startAgent(t, e.config)
	for pulls := map[string]bool{}; len(pulls) < 2; {
		m := e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool {
			return m.Topic == e.prefix+"/pull/json" || m.Topic == prefix2+"/pull/json"
		})
		pulls[m.Topic] = true
	}
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":1,"entries":["one"]}`))
	e.server.Publish(t, prefix2+"/json", 1, []byte(`{"id":2,"entries":["two"]}`))

	statusOf := func(s *mqtttest.Sub) string {
		var c struct {
			Status string `json:"status"`
		}
		m := s.Next(t, 20*time.Second)
		json.Unmarshal(m.Payload, &c)
		return c.Status
	}
	if s := statusOf(status2); s != "ok" {
		t.Errorf("gw-002's status = %q, want ok", s)
	}
	if b, err := os.ReadFile(filepath.Join(e.dir, "out", "gw-002.json")); string(b) != `["two"]` {
		t.Errorf("gw-002's output = %q (%v), want [\"two\"]", b, err)
	}
	if s, want := statusOf(status1), "write failed: "+e.output+" is a FIFO, not a regular file; left as it is"; s != want {
		t.Errorf("gw-001's status = %q, want %q", s, want)
	}
	if fi, err := os.Lstat(e.output); err != nil || fi.Mode().Type() != os.ModeNamedPipe {
		t.Errorf("gw-001's output is %v (%v), want the FIFO left as it was", fi.Mode(), err)
	}

	p.terminate(t)
}
