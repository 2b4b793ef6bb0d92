package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/sealed"
)

// cmxctl seal's output opens with the gateway's identity (and with Debian's age, an implementation
// that is not ours, where it is installed); stdin is the default input.
func TestSeal_PrintsAnObjectTheGatewayOpens(t *testing.T) {
	dir := t.TempDir()
	id, err := sealed.Load(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "v.json")
	if err := os.WriteFile(file, []byte(`{"user":"u","password":"p4ss"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var fromFile, fromStdin, stderr bytes.Buffer
	if code := cmdSeal([]string{"--to", id.Recipient(), file}, strings.NewReader(""), &fromFile, &stderr); code != 0 {
		t.Fatalf("seal FILE: exit %d, %s", code, stderr.String())
	}
	if code := cmdSeal([]string{"--to", id.Recipient()}, strings.NewReader(`"hunter2"`), &fromStdin, &stderr); code != 0 {
		t.Fatalf("seal from stdin: exit %d, %s", code, stderr.String())
	}
	out, n, err := id.Open([]byte(`[` + strings.TrimSpace(fromFile.String()) + `,` + strings.TrimSpace(fromStdin.String()) + `]`))
	if err != nil || n != 2 || string(out) != `[{"user":"u","password":"p4ss"},"hunter2"]` {
		t.Fatalf("opened %s, %d, %v", out, n, err)
	}
	if _, err := exec.LookPath("age"); err != nil {
		t.Log("age is not installed (apt-get install age): interop with it not checked")
		return
	}
	var obj struct {
		Armor string `json:"$sealed"`
	}
	if err := json.Unmarshal(fromStdin.Bytes(), &obj); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("age", "-d", "-i", filepath.Join(dir, sealed.FileName))
	cmd.Stdin = strings.NewReader(obj.Armor)
	if plain, err := cmd.Output(); err != nil || string(plain) != `"hunter2"` {
		t.Errorf("age -d: %q, %v", plain, err)
	}
}

func TestSeal_RefusesWhatNoGatewayCouldOpen(t *testing.T) {
	rcpt := func() string {
		id, err := sealed.Load(t.TempDir(), true)
		if err != nil {
			t.Fatal(err)
		}
		return id.Recipient()
	}()
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		want  string
	}{
		{"no recipient", nil, "1", "--to and at most one FILE are required"},
		{"bad recipient", []string{"--to", "age1nope"}, "1", "cmxctl seal: recipient:"},
		{"not JSON", []string{"--to", rcpt}, "hunter2", "cmxctl seal: the value is not JSON (stdin)"},
		{"too large", []string{"--to", rcpt}, `"` + strings.Repeat("a", sealed.MaxArmor) + `"`, "more than 65536 bytes"},
	} {
		var stdout, stderr bytes.Buffer
		code := cmdSeal(tc.args, strings.NewReader(tc.stdin), &stdout, &stderr)
		if code != 2 || stdout.Len() != 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want 2 and %q", tc.name, code, stdout.String(), stderr.String(), tc.want)
		}
	}
}
