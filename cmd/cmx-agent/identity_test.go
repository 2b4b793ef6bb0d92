package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/agent"
)

// The identity as the real binary handles it: none before the first start (identity exits 1), made
// at the first start (0600, printed by identity and carried by status --json), the same after a
// restart, and, once the agent has a database, a missing identity stops the start with a clear
// error instead of a new key.
func TestIdentity_IsMadeOnceAtTheFirstStartPrintedAndNeverSilentlyReplaced(t *testing.T) {
	e := newCrashEnv(t)
	_, stderr, code := runCLI(t, "identity", "--config", e.config)
	if code != 1 || !strings.Contains(stderr, "no identity in ") {
		t.Fatalf("identity before the first start: exit %d, stderr %q; want 1 and 'no identity'", code, stderr)
	}

	p := startAgent(t, e.config)
	e.waitPull(t)
	out, stderr, code := runCLI(t, "identity", "--config", e.config)
	rcpt := strings.TrimSuffix(out, "\n")
	if code != 0 || !strings.HasPrefix(rcpt, "age1") || strings.Contains(rcpt, "\n") {
		t.Fatalf("identity: exit %d, stdout %q, stderr %q; want one age1... line", code, out, stderr)
	}
	path := filepath.Join(e.dir, "state", "identity")
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v, %v; want mode 0600", fi, err)
	}
	out, stderr, code = runCLI(t, "status", "--config", e.config, "--json")
	var st agent.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Recipient != rcpt {
		t.Fatalf("status --json: exit %d, recipient %q, stderr %q; want %q", code, st.Recipient, stderr, rcpt)
	}
	p.terminate(t)

	p = startAgent(t, e.config)
	e.waitPull(t)
	if out, _, _ := runCLI(t, "identity", "--config", e.config); out != rcpt+"\n" {
		t.Fatalf("identity after a restart %q, want %q", out, rcpt)
	}
	p.terminate(t)

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	p = startAgent(t, e.config)
	<-p.done
	if code := p.cmd.ProcessState.ExitCode(); code == 0 || !strings.Contains(p.output(), "identity "+path+" is missing") {
		t.Fatalf("start without the identity: exit %d, stderr\n%s\nwant a failure naming the missing identity", code, p.output())
	}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("the agent made a new identity over an existing database")
	}
}
