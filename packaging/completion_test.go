package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// needFile skips a test that needs a tool this machine lacks, except in the package tests, which
// .ci/run gives every tool.
func needFile(t *testing.T, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CMX_PACKAGING_TEST") == "1" {
			t.Fatalf("%s is needed: apt-get install -y %s", path, pkg)
		}
		t.Skipf("%s is missing (apt-get install -y %s)", path, pkg)
	}
}

// The bash scripts complete subcommands, flags and flag values through bash-completion, as an
// operator's shell loads them.
func TestCompletion_BashCompletesSubcommandsFlagsAndValues(t *testing.T) {
	repoRoot(t)
	needFile(t, "/usr/share/bash-completion/bash_completion", "bash-completion")
	for _, tc := range []struct {
		script, fn string
		line       []string
		want       string
	}{
		{"cmx-agent.bash", "_cmx_agent", []string{"cmx-agent", "bun"}, "bundle"},
		{"cmx-agent.bash", "_cmx_agent", []string{"cmx-agent", "bundle", "--w"}, "--with-outputs"},
		{"cmx-agent.bash", "_cmx_agent", []string{"cmx-agent", "status", "--"}, "--config --socket --json"},
		{"cmx-agent.bash", "_cmx_agent", []string{"cmx-agent", "in"}, "init"},
		{"cmx-agent.bash", "_cmx_agent", []string{"cmx-agent", "init", "--dialect", "c"}, "cmx3 cmp7"},
		{"cmx-agent.bash", "_cmx_agent", []string{"cmx-agent", "check", "--o"}, "--online"},
		{"cmx-agent.bash", "_cmx_agent", []string{"cmx-agent", "run", "--log-format", "j"}, "json"},
		{"cmx-agent.bash", "_cmx_agent", []string{"cmx-agent", "id"}, "identity"},
		{"cmxctl.bash", "_cmxctl", []string{"cmxctl", "se"}, "serve seal"},
		{"cmxctl.bash", "_cmxctl", []string{"cmxctl", "seal", "--"}, "--to"},
		{"cmxctl.bash", "_cmxctl", []string{"cmxctl", "push", "--pass"}, "--password-file"},
		{"cmxctl.bash", "_cmxctl", []string{"cmxctl", "serve", "--dialect", "c"}, "cmx3 cmp7"},
	} {
		script := `source /usr/share/bash-completion/bash_completion
source "completion/$1"
fn=$2; shift 2
COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
"$fn"
echo "${COMPREPLY[*]}"`
		out, err := exec.Command("bash", append([]string{"-c", script, "bash", tc.script, tc.fn}, tc.line...)...).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != tc.want {
			t.Errorf("%s: completing %q gives %q (%v), want %q", tc.script, strings.Join(tc.line, " "), out, err, tc.want)
		}
	}
}

func TestCompletion_ZshScriptsParse(t *testing.T) {
	repoRoot(t)
	needFile(t, "/usr/bin/zsh", "zsh")
	for _, f := range []string{"completion/_cmx-agent", "completion/_cmxctl"} {
		if out, err := exec.Command("zsh", "-n", f).CombinedOutput(); err != nil {
			t.Errorf("zsh -n %s: %v\n%s", f, err, out)
		}
	}
}

// zshComplete types a line and TAB into an interactive zsh (in a pseudo-terminal, with compinit
// and the scripts on fpath) and waits until the screen shows want: completion needs a real
// line editor. zpty -r returns once its pattern appears, so there is no sleep; the context ends a
// completion that never comes. (RE""ADY: the shell's echo of the command line must not match.)
const zshComplete = `zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='%% '; fpath=($1 \$fpath); autoload -U compinit; compinit -u -d $3/zcompdump; echo RE""ADY"
zpty -r z out '*READY*'
zpty -w -n z "$2"$'\t'
zpty -r z out "*$4*" && print -r -- COMPLETED
zpty -d z`

func TestCompletion_ZshCompletesSubcommandsFlagsAndValues(t *testing.T) {
	repoRoot(t)
	needFile(t, "/usr/bin/zsh", "zsh")
	dir, err := filepath.Abs("completion")
	if err != nil {
		t.Fatal(err)
	}
	dump := t.TempDir() // compinit's dump, made by the first case (seconds) and reused by the others
	for _, tc := range []struct{ line, want string }{
		{"cmx-agent bun", "bundle"},
		{"cmx-agent init --dialect=cmp", "--dialect=cmp7"},
		{"cmx-agent bundle --with-o", "--with-outputs"},
		{"cmx-agent run --log-format=j", "--log-format=json"},
		{"cmxctl se", "serve"},
		{"cmxctl push --password-f", "--password-file"},
		{"cmxctl serve --dialect=cmp", "--dialect=cmp7"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, "zsh", "-f", "-c", zshComplete, "zsh", dir, tc.line, dump, tc.want).CombinedOutput()
		cancel()
		if err != nil || !strings.Contains(string(out), "COMPLETED") {
			t.Errorf("zsh: completing %q did not show %q (%v):\n%q", tc.line, tc.want, err, out)
		}
	}
}
