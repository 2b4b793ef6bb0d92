package main

import (
	"bytes"
	"regexp"
	"slices"
	"strings"
	"testing"

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
