package main

import (
	"os"
	"path"
	"regexp"
	"slices"
	"testing"
)

// The documents installed in /usr/share/doc/cmx-agent keep the repository's layout (README.md at
// the top, the others in docs/), so each relative link between them works on a gateway without
// network; a link to a document the packages do not carry would be dead there.
func TestDocs_LinksBetweenInstalledDocsResolve(t *testing.T) {
	repoRoot(t)
	var installed []string // where the packages put them
	for _, src := range installedDocs() {
		installed = append(installed, docPath(src))
	}
	link := regexp.MustCompile(`\]\(([^)#:\s]+\.md)(#[^)]*)?\)`)
	for _, src := range installedDocs() {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			if target := path.Join(path.Dir(docPath(src)), m[1]); !slices.Contains(installed, target) {
				t.Errorf("%s links to %s, which would be %s on a gateway: not installed", src, m[1], target)
			}
		}
	}
	for _, want := range []string{docDir + "README.md", docDir + "docs/operations.md"} {
		if !slices.Contains(installed, want) {
			t.Errorf("installed docs %v lack %s", installed, want)
		}
	}
}
