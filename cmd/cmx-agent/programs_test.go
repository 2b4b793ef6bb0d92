package main

import (
	"os"
	"path/filepath"
	"testing"
)

// A hook named relative to the configuration file runs when the agent runs from "/", as under the
// service manager: a path in argv[0] is resolved against the file's folder, not the working
// directory.
func TestRun_RelativeHookIsResolvedAgainstTheConfigurationsFolder(t *testing.T) {
	e := newCrashEnvWith(t, "", `[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
hook = ["./bin/hook.sh"]
`, "gw-001.json")
	hook := filepath.Join(e.dir, "bin", "hook.sh")
	if err := os.MkdirAll(filepath.Dir(hook), 0o755); err != nil {
		t.Fatal(err)
	}
	writeOrFail(t, hook, "#!/bin/sh\necho \"$CMX_CONFIG_ID\" >> \"$(dirname \"$0\")/../hook.ran\"\n")
	if err := os.Chmod(hook, 0o755); err != nil {
		t.Fatal(err)
	}
	startAgentIn(t, "/", e.config)
	e.waitPull(t)
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":"r1","entries":[1]}`))
	if s := e.waitConfirmation(t, `"r1"`); s != "ok" {
		t.Errorf("status %q, want ok", s)
	}
	if b, err := os.ReadFile(filepath.Join(e.dir, "hook.ran")); err != nil || string(b) != "r1\n" {
		t.Errorf("hook marker %q (err %v), want the hook run once for r1", b, err)
	}
}
