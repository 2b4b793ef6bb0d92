package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The documents installed side by side in /usr/share/doc/cmx-agent link to each other by file
// name; a link to a document the packages do not carry is dead on the gateway.
func TestDocs_LinksBetweenInstalledDocsResolve(t *testing.T) {
	repoRoot(t)
	var installed []string // their names in /usr/share/doc/cmx-agent
	for _, src := range installedDocs() {
		installed = append(installed, filepath.Base(src))
	}
	link := regexp.MustCompile(`\]\(([^)#:\s]+\.md)(#[^)]*)?\)`)
	for _, src := range installedDocs() {
		if !strings.HasPrefix(src, "docs/") {
			continue // README.md links into docs/ as the repository lays them out
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			if !slices.Contains(installed, m[1]) {
				t.Errorf("%s links to %s, which the packages do not install next to it", src, m[1])
			}
		}
	}
	if !slices.Contains(installed, "operations.md") {
		t.Errorf("installed docs %v lack operations.md", installed)
	}
}
