package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkParse parses the shipped example (one endpoint) and a gateway fronting 1,000 devices.
func BenchmarkParse(b *testing.B) {
	example, err := os.ReadFile(filepath.Join("..", "examples", "agent.toml"))
	if err != nil {
		b.Fatal(err)
	}
	var sb strings.Builder
	sb.WriteString("[broker]\nservers = [\"tcp://127.0.0.1:1883\"]\n[kaa]\napp_version = \"app-v1\"\n[agent]\nstate_dir = \"state\"\n")
	for i := range 1000 {
		fmt.Fprintf(&sb, "[[endpoint]]\ntoken = \"dev-%04d\"\noutput = \"out/dev-%04d.json\"\nmode = \"0640\"\n", i, i)
	}
	cases := []struct {
		name string
		src  []byte
	}{
		{"example", example},
		{"1000-endpoints", []byte(sb.String())},
	}
	dir := b.TempDir()
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			path := filepath.Join(dir, "agent.toml")
			if _, err := Parse(path, c.src); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(c.src)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(path, c.src); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
