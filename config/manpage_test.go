package config

import (
	"os"
	"slices"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/cmx-agent/cmx-agent/internal/doccheck"
)

// cmx-agent.toml(5) defines every key of every table, and nothing else, in the table's section.
func TestManPage_DocumentsEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../docs/man/cmx-agent.toml.5.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range doccheck.CheckKeys(string(doc), Keys(), "endpoint") {
		t.Errorf("docs/man/cmx-agent.toml.5.md: %s", p)
	}
}

// The example the packages ship names every key, so that it can stand as the reference the man
// page and the README point at.
func TestExample_NamesEveryKey(t *testing.T) {
	var raw map[string]any
	if _, err := toml.DecodeFile("../examples/agent.toml", &raw); err != nil {
		t.Fatal(err)
	}
	keys := Keys()
	for _, table := range keys[""] {
		var got map[string]any
		switch v := raw[table].(type) {
		case map[string]any:
			got = v
		case []map[string]any:
			got = v[0]
		}
		for _, k := range keys[table] {
			if _, ok := got[k]; !ok {
				t.Errorf("examples/agent.toml lacks %s.%s", table, k)
			}
		}
		for k := range got {
			if !slices.Contains(keys[table], k) {
				t.Errorf("examples/agent.toml has %s.%s, which is no key", table, k)
			}
		}
	}
}
