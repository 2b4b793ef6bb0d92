package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Every page renders to roff that man accepts without a warning, with the title line made from its
// file name and the version, and a NAME line that whatis and lintian can parse.
func TestManPages_RenderCleanly(t *testing.T) {
	repoRoot(t)
	srcs, _ := filepath.Glob(filepath.Join(manSources, "*.md"))
	if len(srcs) != 3 {
		t.Fatalf("man sources %v, want the three pages", srcs)
	}
	dir := t.TempDir()
	if _, err := manPages(dir, "1.2.3", time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ page, th, name string }{
		{"cmx-agent.1", `.TH CMX-AGENT 1 "December 2026" "cmx-agent 1.2.3" "User Commands"`, `cmx-agent \- `},
		{"cmxctl.1", `.TH CMXCTL 1 "December 2026" "cmx-agent 1.2.3" "User Commands"`, `cmxctl \- `},
		{"cmx-agent.toml.5", `.TH CMX-AGENT.TOML 5 "December 2026" "cmx-agent 1.2.3" "File Formats"`, `cmx-agent.toml \- `},
	} {
		gz := filepath.Join(dir, want.page+".gz")
		roff, err := exec.Command("zcat", gz).Output()
		if err != nil {
			t.Fatalf("%s: %v", gz, err)
		}
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want.th) + `$`).Match(roff) {
			t.Errorf("%s has no title line %q:\n%s", want.page, want.th, firstLines(roff))
		}
		if !regexp.MustCompile(`(?m)^\.SH NAME\n` + regexp.QuoteMeta(want.name)).Match(roff) {
			t.Errorf("%s: no NAME line %q", want.page, want.name)
		}
		if _, err := exec.LookPath("man"); err != nil {
			continue
		}
		// As lintian runs it: the formatted page is thrown away, every warning is on stderr.
		var stderr strings.Builder
		cmd := exec.Command("man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", gz)
		cmd.Env = append(os.Environ(), "MANROFFSEQ=", "MANWIDTH=80")
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil || stderr.Len() != 0 {
			t.Errorf("man --warnings %s (%v):\n%s", want.page, err, stderr.String())
		}
	}
}

func firstLines(b []byte) string {
	lines := strings.SplitN(string(b), "\n", 6)
	return strings.Join(lines[:min(5, len(lines))], "\n")
}
