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
		for _, banned := range []string{"github.com/mochi-mqtt/", "github.com/goreleaser/", "/internal/cloud"} {
			if strings.Contains(pkg, banned) {
				t.Errorf("cmx-agent imports %s", pkg)
			}
		}
	}
}
