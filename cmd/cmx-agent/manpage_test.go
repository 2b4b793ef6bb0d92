package main

import (
	"bytes"
	"testing"

	"github.com/cmx-agent/cmx-agent/internal/doccheck"
)

// realCommand is cmx-agent as its usage text and flag sets define it.
func realCommand(t *testing.T) doccheck.Command {
	t.Helper()
	c := doccheck.Real("cmx-agent", usage, func(sub string) string {
		var stdout, stderr bytes.Buffer
		run([]string{sub, "-h"}, &stdout, &stderr)
		return stdout.String()
	})
	if len(c.Subs) < 7 || len(c.Subs["run"]) != 3 || len(c.Subs["bundle"]) < 4 {
		t.Fatalf("the real command as read: %v; the usage text or -h output changed shape", c.Subs)
	}
	return c
}

// The man page and the completions are written by hand; this keeps them from drifting from the
// flag sets: every subcommand and flag documented and completed, nothing documented that is gone.
func TestManPage_DocumentsEverySubcommandAndFlag(t *testing.T) {
	realCommand(t).Test(t, "## %s", []string{"--no-pager", "--help"}, "../../docs/man/cmx-agent.1.md")
}

func TestCompletion_KnowsEverySubcommandAndFlag(t *testing.T) {
	realCommand(t).Test(t, "", nil, "../../completion/cmx-agent.bash", "../../completion/_cmx-agent")
}
