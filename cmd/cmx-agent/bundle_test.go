package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/internal/bundle"
)

// untar returns the files of a bundle by name.
func untar(t *testing.T, path string) map[string]string {
	t.Helper()
	files, err := bundle.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(files))
	for name, f := range files {
		out[name] = string(f.Data)
	}
	return out
}

// The bundle against the real agent: the applied id and hash it reports are the ones the agent
// stored for the configuration it wrote.
func TestBundle_ReportsTheRunningAgentsAppliedIDAndHash(t *testing.T) {
	e := newCrashEnv(t)
	p := startAgent(t, e.config)
	e.waitPull(t)
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":"b1","entries":[{"v":1}]}`))
	if s := e.waitConfirmation(t, `"b1"`); s != "ok" {
		t.Fatalf("status = %q, want ok", s)
	}
	// On the held path the confirmation goes out before the result's commit, which is logged
	// "configuration applied": the bundle must read the committed state.
	p.waitLine(t, "configuration applied")
	body, err := os.ReadFile(e.output)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	hash := hex.EncodeToString(sum[:])

	out := filepath.Join(t.TempDir(), "b.tar.gz")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"bundle", "--config", e.config, "-o", out, "--journal-lines", "0"}, &stdout, &stderr); code != 0 {
		t.Fatalf("bundle exit %d: %s", code, stderr.String())
	}
	if strings.TrimSpace(stdout.String()) != out {
		t.Errorf("bundle printed %q, want the archive's path", stdout.String())
	}
	files := untar(t, out)
	found := false
	for _, line := range strings.Split(files["endpoints.txt"], "\n") {
		if strings.HasPrefix(line, "gw-001 ") {
			found = strings.Contains(line, " b1 ") && strings.Contains(line, hash)
		}
	}
	if !found {
		t.Errorf("endpoints.txt has no line for gw-001 with id b1 and hash %s:\n%s", hash, files["endpoints.txt"])
	}
	if !strings.Contains(files["status.json"], `"applied_hash": "`+hash+`"`) {
		t.Errorf("status.json lacks the applied hash:\n%s", files["status.json"])
	}
	if !strings.Contains(files["outputs.txt"], hash) || !strings.Contains(files["outputs.txt"], "yes") {
		t.Errorf("outputs.txt does not show the output as applied:\n%s", files["outputs.txt"])
	}
}

func TestBundle_UsageErrors(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"bundle", "--journal-lines", "x"}, &stdout, &stderr); code != 2 {
		t.Errorf("exit %d for a bad flag, want 2", code)
	}
	if code := run([]string{"bundle", "extra"}, &stdout, &stderr); code != 2 {
		t.Errorf("exit %d for an extra argument, want 2", code)
	}
}
