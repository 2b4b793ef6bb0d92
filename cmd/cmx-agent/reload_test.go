package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// replaceConfig writes the configuration file the way configuration management does: a new file
// renamed over the old one.
func replaceConfig(t *testing.T, path, text string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestReload_ConfigFileChangeAddsAnEndpointOnTheSameConnection(t *testing.T) {
	e := newCrashEnv(t)
	p := startAgent(t, e.config)
	e.waitPull(t)
	orig, _ := os.ReadFile(e.config)

	// Invalid: every problem is logged and the agent keeps running on the old configuration.
	replaceConfig(t, e.config, string(orig)+"[[endpoint]]\ntoken = \"gw-002\"\nbogus = 1\n")
	p.waitLine(t, "configuration invalid; keeping the running one")
	p.waitLine(t, "bogus")
	p.waitLine(t, "missing required key output")

	replaceConfig(t, e.config, string(orig)+"[[endpoint]]\ntoken = \"gw-002\"\noutput = \"out/gw-002.json\"\n")
	p.waitLine(t, "configuration reloaded")
	pfx2 := "kp1/" + crashApp + "/cmx/gw-002"
	e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return m.Topic == pfx2+"/pull/json" })
	e.server.Publish(t, pfx2+"/json", 1, []byte(`{"id":1,"entries":["two"]}`))
	e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return m.Topic == pfx2+"/json/status" })
	if b, _ := os.ReadFile(filepath.Join(e.dir, "out", "gw-002.json")); string(b) != `["two"]` {
		t.Errorf("gw-002 output = %q", b)
	}
	if n := e.broker.Connects("crash-agent"); n != 1 {
		t.Errorf("broker saw %d CONNECTs, want 1", n)
	}
}

func TestReload_SIGHUPWithKaaChangeRestartsTheAgent(t *testing.T) {
	e := newCrashEnv(t)
	p := startAgent(t, e.config)
	e.waitPull(t)
	orig, _ := os.ReadFile(e.config)
	// Written in place, then SIGHUP: the file watcher may see it first; either reloads it.
	os.WriteFile(e.config, []byte(strings.Replace(string(orig), crashApp, "crash-v2", 1)), 0o644)
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLine(t, "restarting the agent to apply it")
	e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return m.Topic == "kp1/crash-v2/cmx/gw-001/pull/json" })
	if n := e.broker.Connects("crash-agent"); n != 2 {
		t.Errorf("broker saw %d CONNECTs, want 2 (a [kaa] change reconnects)", n)
	}
}
