package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/cmx-agent/cmx-agent/internal/doccheck"
)

// realCommand is cmxctl as its usage text and flag sets define it.
func realCommand(t *testing.T) doccheck.Command {
	t.Helper()
	c := doccheck.Real("cmxctl", usage, func(sub string) string {
		var stdout, stderr bytes.Buffer
		run(context.Background(), []string{sub, "-h"}, &stdout, &stderr)
		return stdout.String()
	})
	if len(c.Subs) < 4 || len(c.Subs["push"]) != 16 {
		t.Fatalf("the real command as read: %v; the usage text or -h output changed shape", c.Subs)
	}
	return c
}

// The man page and the completions are written by hand; this keeps them from drifting from the
// flag sets.
func TestManPage_DocumentsEverySubcommandAndFlag(t *testing.T) {
	realCommand(t).Test(t, "## %s", []string{"--help"}, "../../docs/man/cmxctl.1.md")
}

func TestCompletion_KnowsEverySubcommandAndFlag(t *testing.T) {
	realCommand(t).Test(t, "", nil, "../../completion/cmxctl.bash", "../../completion/_cmxctl")
}
