package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// history and status as processes against the real agent and mosquitto: the applied
// configurations newest first with how each came, --json, an endpoint named, one that is not
// (exit 2), --socket with a broken configuration file, no agent (exit 1); and status after a
// refused push: the refusal on screen, cut in the table and whole in --json.
func TestHistory_TheCommandListsWhatTheRunningAgentApplied(t *testing.T) {
	e := newCrashEnv(t)
	p := startAgent(t, e.config)
	m := e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return m.Topic == e.prefix+"/pull/json" })
	pull, err := cmx.ParsePullRequest(m.Payload)
	if err != nil {
		t.Fatal(err)
	}
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":"v1","entries":[1]}`))
	e.waitConfirmation(t, `"v1"`)
	answer := fmt.Sprintf("%s/json/%d", e.prefix, pull)
	e.server.Publish(t, answer, 1, []byte(`{"id":"v2","entries":[2]}`))
	e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return m.Topic == answer+"/status" })
	p.waitLineN(t, "configuration applied", 2)
	sock := filepath.Join(e.dir, "state", "agent.sock")

	out, stderr, code := runCLI(t, "history", "--config", e.config)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("history: exit %d, stdout\n%s\nstderr %s; want a header and 2 lines", code, out, stderr)
	}
	sep := regexp.MustCompile(`\s{2,}`)
	if got := sep.Split(lines[0], -1); !slices.Equal(got, []string{"ENDPOINT", "APPLIED AT", "ID", "VIA", "VERSION", "SHA256"}) {
		t.Errorf("header %q", lines[0])
	}
	for i, want := range [][]string{{"gw-001", "v2", "pull", sum("[2]")}, {"gw-001", "v1", "push", sum("[1]")}} {
		cols := sep.Split(lines[i+1], -1)
		// VERSION is "-": these configurations are not signed.
		if len(cols) != 6 || cols[0] != want[0] || cols[2] != want[1] || cols[3] != want[2] || cols[4] != "-" || cols[5] != want[3] {
			t.Errorf("line %d %q, want %q", i+1, lines[i+1], want)
		}
		if _, err := time.ParseInLocation(time.DateTime, cols[1], time.Local); err != nil {
			t.Errorf("line %d: applied at %q: %v", i+1, cols[1], err)
		}
	}

	// --socket alone reaches the agent; the configuration file is not read (it may be broken).
	out, stderr, code = runCLI(t, "history", "gw-001", "--json", "--socket", sock)
	var h agent.History
	if code != 0 || json.Unmarshal([]byte(out), &h) != nil {
		t.Fatalf("history gw-001 --json --socket: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if len(h.Endpoints) != 1 || len(h.Endpoints[0].Entries) != 2 || h.Endpoints[0].Entries[0].ID != "v2" ||
		h.Endpoints[0].Entries[0].SHA256 != sum("[2]") || !strings.Contains(out, `"origin": "pull"`) {
		t.Errorf("history --json:\n%s\nwant gw-001 with v2 (pull) then v1", out)
	}
	_, stderr, code = runCLI(t, "history", "--socket", sock, "nope")
	if code != 2 || stderr != "cmx-agent history: no endpoint \"nope\" (endpoints: gw-001)\n" {
		t.Errorf("history nope: exit %d, stderr %q; want 2 naming the endpoints", code, stderr)
	}
	_, stderr, code = runCLI(t, "history", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if code != 1 || !strings.Contains(stderr, "no agent answers on ") {
		t.Errorf("history with no agent: exit %d, stderr %q; want 1", code, stderr)
	}
	_, _, code = runCLI(t, "history", "--config", e.config, "a", "b")
	if code != 2 {
		t.Errorf("history with two endpoints: exit %d, want 2", code)
	}

	// A refused push is the last answer: status says so, cut in the table, whole in --json.
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`xyz`))
	e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool {
		return m.Topic == e.prefix+"/json/status" && strings.Contains(string(m.Payload), "not JSON")
	})
	var st agent.Status
	testkit.Eventually(t, 20*time.Second, func() bool {
		out, stderr, code = runCLI(t, "status", "--json", "--config", e.config)
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("status --json: exit %d, %q, %q", code, out, stderr)
		}
		return st.Endpoints[0].LastCode == 400
	}, "status --json never shows the refusal: %s", func() string { return out })
	full := st.Endpoints[0].LastStatus
	if !strings.HasPrefix(full, "invalid payload: not JSON: ") || len(full) <= maxCell || st.Endpoints[0].AppliedID != "v2" {
		t.Fatalf("status --json: last %q (code %d), applied %q; want the whole refusal, v2 still applied",
			full, st.Endpoints[0].LastCode, st.Endpoints[0].AppliedID)
	}
	out, _, code = runCLI(t, "status", "--config", e.config)
	if want := "(no id): " + full[:maxCell] + "…"; code != 0 || !strings.Contains(out, want) || strings.Contains(out, full) {
		t.Errorf("status: exit %d\n%s\nwant the refusal cut: %q", code, out, want)
	}
}

func sum(s string) string {
	b := sha256.Sum256([]byte(s))
	return hex.EncodeToString(b[:])
}
