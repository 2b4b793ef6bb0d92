package main

import (
	"bytes"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
)

// An endpoint whose state record does not decode gets its own line saying so; the others read as
// always.
func TestStatus_PrintsADamagedEndpointOnItsLine(t *testing.T) {
	st := agent.Status{Connected: true, Server: "tcp://127.0.0.1:1883", Dialect: "cmx3", Endpoints: []agent.EndpointStatus{
		{Key: "dev-2", Output: "/out/dev-2.json", Applied: true, AppliedID: "7", LastID: "7", LastStatus: "ok", LastOK: true},
		{Key: "gw-001", Output: "/out/gw-001.json", Applied: true, AppliedHash: "ab12",
			Damaged: "state record does not decode: unexpected end of JSON input"},
	}}
	var b bytes.Buffer
	printStatus(&b, st)
	lines := strings.Split(b.String(), "\n")
	if len(lines) < 4 {
		t.Fatalf("status printed\n%s\nwant a line per endpoint", b.String())
	}
	if f := strings.Fields(lines[2]); len(f) < 3 || f[0] != "dev-2" || f[1] != "7" || !strings.Contains(lines[2], "7: ok") {
		t.Errorf("dev-2's line %q, want 7 applied and its status", lines[2])
	}
	cols := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(lines[3]), -1)
	want := []string{"gw-001", "?", "?", "damaged: state record does not decode: unexpected end of JSON input", "0", "/out/gw-001.json"}
	if !slices.Equal(cols, want) {
		t.Errorf("gw-001's line reads %q, want the columns %q", lines[3], want)
	}
}

// A long status is cut in the table (the full text is in --json), an id or status holding tabs or
// newlines cannot break the columns, and a request the server leaves unanswered is shown with
// when it was sent.
func TestStatus_TableCutsLongStatusesAndShowsAnUnansweredRequest(t *testing.T) {
	long := "hook failed: exit 1: " + strings.Repeat("very long error ", 20)
	since := time.Date(2026, 12, 7, 6, 41, 2, 0, time.Local)
	st := agent.Status{Connected: true, Server: "tcp://127.0.0.1:1883", Dialect: "cmx3", Endpoints: []agent.EndpointStatus{
		{Key: "a", Output: "/out/a.json", Applied: true, AppliedID: "7", LastID: "8", LastStatus: long, LastCode: 500},
		{Key: "b", Output: "/out/b.json", LastID: "x\ty\nz", LastStatus: "invalid payload:\tnot JSON", LastCode: 400,
			RequestWaitingSince: since},
	}}
	var b bytes.Buffer
	printStatus(&b, st)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("status printed %d lines, want 4:\n%s", len(lines), b.String())
	}
	cols := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(lines[2]), -1)
	wantLast := "8: " + string([]rune(long)[:60]) + "…"
	if len(cols) != 6 || cols[3] != wantLast {
		t.Errorf("a's line %q, want its status cut to 60 characters: %q", lines[2], wantLast)
	}
	cols = regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(lines[3]), -1)
	wantLast = "x y z: invalid payload: not JSON (request unanswered since " + since.Format(time.DateTime) + ")"
	if len(cols) != 6 || cols[0] != "b" || cols[3] != wantLast || cols[5] != "/out/b.json" {
		t.Errorf("b's line %q, want the columns intact and the last status %q", lines[3], wantLast)
	}
}
