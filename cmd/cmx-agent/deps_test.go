package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The agent runs on small gateways: the broker and the packaging tool used by cmxctl and the
// build must not end up in its binary.
func TestBinary_LeavesOutServerSideAndPackagingDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/mochi-mqtt/", "github.com/goreleaser/", "github.com/cpuguy83/go-md2man", "/internal/cloud"} {
			if strings.Contains(pkg, banned) {
				t.Errorf("cmx-agent imports %s", pkg)
			}
		}
	}
}

// packaging/ is a module of its own so that nfpm and its dozens of modules stay out of the agent's
// module graph (and out of its go.sum, its vulnerability reports and its updates).
func TestModule_GraphLeavesOutThePackagingTool(t *testing.T) {
	cmd := exec.Command("go", "mod", "graph")
	cmd.Env = append(cmd.Environ(), "GOWORK=off") // the root module alone, not the workspace
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go mod graph: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "github.com/goreleaser/") {
		t.Errorf("the root module's graph lists goreleaser modules:\n%s", out)
	}
}
