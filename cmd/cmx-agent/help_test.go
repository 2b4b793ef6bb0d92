package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/internal/doccheck"
)

// Every subcommand answers --help and -h with its usage on stdout and exit 0: a synopsis with its
// positional arguments, a line of what it does, and its flags written with two dashes.
func TestHelp_EveryCommandAnswersHelpOnStdout(t *testing.T) {
	synopsis := map[string]string{
		"watch": "usage: cmx-agent watch [--debounce D] PATH [-- CMD ARGS...]\n",
		"init":  "usage: cmx-agent init --config PATH --token T --server URL --app-version A",
	}
	oneDash := regexp.MustCompile(`(?m)^\s+-[a-z][a-z-]+`)
	for _, sub := range doccheck.Subcommands(usage) {
		for _, flag := range []string{"--help", "-h"} {
			t.Run(sub+" "+flag, func(t *testing.T) {
				var stdout, stderr bytes.Buffer
				code := run([]string{sub, flag}, &stdout, &stderr)
				out := stdout.String()
				if code != 0 || stderr.Len() > 0 {
					t.Errorf("exit %d, stderr %q; want 0 and nothing on stderr", code, stderr.String())
				}
				if !strings.HasPrefix(out, "usage: cmx-agent "+sub) {
					t.Errorf("stdout %q, want it to begin with the usage of %s", out, sub)
				}
				if want, ok := synopsis[sub]; ok && !strings.HasPrefix(out, want) {
					t.Errorf("stdout %q, want it to begin with %q", out, want)
				}
				if lines := strings.Split(out, "\n"); len(lines) < 3 || lines[1] != "" || len(lines[2]) < 10 {
					t.Errorf("stdout %q, want the synopsis, an empty line and a line of what %s does", out, sub)
				}
				if m := oneDash.FindString(out); m != "" {
					t.Errorf("stdout writes a flag with one dash (%q):\n%s", m, out)
				}
			})
		}
	}
}

// A bad flag is a usage error: exit 2, the problem and the synopsis on stderr, nothing on stdout.
func TestHelp_ABadFlagIsExit2WithTheSynopsisOnStderr(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"status", "--colour"}, &stdout, &stderr)
	if code != 2 || stdout.Len() > 0 {
		t.Errorf("exit %d, stdout %q; want 2 and nothing on stdout", code, stdout.String())
	}
	for _, want := range []string{"cmx-agent status: flag provided but not defined: --colour", "usage: cmx-agent status", "cmx-agent status --help"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q lacks %q", stderr.String(), want)
		}
	}
}

func TestHelp_HelpCommandNamesACommandsUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"help", "sync"}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "usage: cmx-agent sync") {
		t.Errorf("help sync: exit %d, stdout %q, stderr %q; want sync's usage", code, stdout.String(), stderr.String())
	}
}
