package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// runningAgent7 starts a real cmp7 agent for gw-001 (default and "modbus") and waits until it has
// subscribed; it returns its output folder.
func runningAgent7(t *testing.T, b *mqtttest.Broker) string {
	t.Helper()
	// The named configuration is requested last, after the subscription that covers both.
	dir := startAgent(t, b, `[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
[[endpoint]]
token = "gw-001"
name = "modbus"
output = "out/gw-001-modbus.json"
`, "cmp7", "kp1/"+app+"/cmx/gw-001/config/json/modbus/+")
	return filepath.Join(dir, "out")
}

func TestPushCmp7_WaitExitsZeroOnlyOnApplied(t *testing.T) {
	b := mqtttest.Start(t)
	out := runningAgent7(t, b)
	common := []string{"push", "--dialect", "cmp7", "--broker", b.URL, "--app", app, "--token", "gw-001", "--wait", "10s"}

	stdout, stderr, code := cmxctl(t, append(common, "--id", "cfg-7", writeFile(t, `{"k":"v"}`))...)
	if code != 0 || stdout != "applied gw-001 configId=\"cfg-7\" statusCode=200\n" {
		t.Fatalf("push: exit %d, stdout %q, stderr %q; want 0 and the applied report", code, stdout, stderr)
	}
	if got, err := os.ReadFile(filepath.Join(out, "gw-001.json")); err != nil || string(got) != `{"k":"v"}` {
		t.Errorf("output = %q (%v) right after the report, want the pushed config", got, err)
	}

	stdout, _, code = cmxctl(t, append(common, "--name", "modbus", "--id", "m-1", writeFile(t, `[40001]`))...)
	if code != 0 || stdout != "applied gw-001/modbus configId=\"m-1\" statusCode=200\n" {
		t.Errorf("push --name modbus: exit %d, stdout %q", code, stdout)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "gw-001-modbus.json")); string(got) != `[40001]` {
		t.Errorf("modbus output = %q, want [40001]", got)
	}

	// A response without its config is refused: the report carries 400 and the reason; exit 1.
	stdout, _, code = cmxctl(t, append(common, "--raw", "--id", "cfg-8", writeFile(t, `{"configId":"cfg-8"}`))...)
	if code != 1 || !strings.Contains(stdout, `configId="cfg-8" statusCode=400 reason="`) || !strings.Contains(stdout, "config missing") {
		t.Errorf("refused push: exit %d, stdout %q; want 1 and the failed report", code, stdout)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "gw-001.json")); string(got) != `{"k":"v"}` {
		t.Errorf("output after a refused push = %q, want unchanged", got)
	}

	_, stderr, code = cmxctl(t, "push", "--dialect", "cmp7", "--broker", b.URL, "--app", app, "--token", "nobody", "--wait", "100ms", writeFile(t, `1`))
	if code != 1 || !strings.Contains(stderr, "no confirmation within 100ms") {
		t.Errorf("no agent: exit %d, stderr %q; want 1", code, stderr)
	}
}
