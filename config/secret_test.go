package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad_WorldReadableSecretFilesAreRefused(t *testing.T) {
	path := writeConfig(t, "[broker]\npassword_file = \"secret\"\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n"+kaaOK+endpointOK)
	dir := filepath.Dir(path)
	for _, f := range []string{"secret", "key.pem", "cert.pem"} {
		if err := os.Chmod(filepath.Join(dir, f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	probs := loadProblems(t, path)
	got := probs.Error()
	for _, want := range []string{
		"broker.password_file: " + filepath.Join(dir, "secret") + " is readable by every user (mode 0644)",
		"broker.key_file: " + filepath.Join(dir, "key.pem") + " is readable by every user (mode 0644)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("problems %q lack %q", got, want)
		}
	}
	if strings.Contains(got, "cert_file") {
		t.Errorf("a certificate is public; problems %q mention cert_file", got)
	}
	if len(probs) != 2 {
		t.Errorf("%d problems, want 2: %v", len(probs), probs)
	}

	// Group read is fine: a packaging group may give the agent access.
	for _, f := range []string{"secret", "key.pem"} {
		if err := os.Chmod(filepath.Join(dir, f), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	mustLoad(t, path)
}
