package sealed

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad_CreatesTheIdentityOnceWithMode0600AndKeepsIt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	id, err := Load(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id.Recipient(), "age1") {
		t.Fatalf("recipient %q, want age1...", id.Recipient())
	}
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity mode %04o, want 0600", fi.Mode().Perm())
	}
	for _, create := range []bool{true, false} {
		again, err := Load(dir, create)
		if err != nil {
			t.Fatal(err)
		}
		if again.Recipient() != id.Recipient() {
			t.Fatalf("create=%v: recipient %s after a restart, want the first one %s", create, again.Recipient(), id.Recipient())
		}
	}
}

func TestLoad_RefusesAMissingOrDamagedIdentityWithoutMakingANewOne(t *testing.T) {
	const secretish = "AGE-SECRET-KEY-1NOTAKEY"
	cases := []struct {
		name    string
		content string // "" : no file
		mode    os.FileMode
		want    string
	}{
		{"missing", "", 0, "is missing"},
		{"damaged", secretish + "\n", 0o600, "is damaged"},
		{"readable by others", "", 0o644, "lets others read"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			if c.mode != 0 {
				content := c.content
				if content == "" {
					content = "# placeholder\n" + secretish + "\n"
				}
				if err := os.WriteFile(path, []byte(content), c.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, c.mode); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := os.ReadFile(path)
			_, err := Load(dir, false)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one saying %q", err, c.want)
			}
			if strings.Contains(err.Error(), secretish) {
				t.Fatalf("the error quotes the key file: %v", err)
			}
			after, _ := os.ReadFile(path)
			if string(after) != string(before) {
				t.Fatalf("identity file changed from %q to %q", before, after)
			}
		})
	}
}

func TestLoad_TheFirstKeyOfSeveralIsTheCurrentRecipient(t *testing.T) {
	oldDir, newDir := t.TempDir(), t.TempDir()
	old, err := Load(oldDir, true)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := Load(newDir, true)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(newDir, FileName))
	b, _ := os.ReadFile(filepath.Join(oldDir, FileName))
	if err := os.WriteFile(filepath.Join(oldDir, FileName), append(a, b...), 0o600); err != nil {
		t.Fatal(err)
	}
	both, err := Load(oldDir, false)
	if err != nil {
		t.Fatal(err)
	}
	if both.Recipient() != cur.Recipient() || len(both.keys) != 2 {
		t.Fatalf("recipient %s with %d keys, want the new one %s (old %s) and 2 keys", both.Recipient(), len(both.keys), cur.Recipient(), old.Recipient())
	}
}
