package cloud

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/trust"
)

// Two edits within a second must not share a version: an agent refuses the same version with
// another config. The same body again keeps its version, so a request is answered with what the
// agent already has.
func TestVersions_AnotherBodyWithinTheSameSecondGetsTheNextVersion(t *testing.T) {
	var vs versions
	a, b := Target{Token: "a"}, Target{Token: "b"}
	steps := []struct {
		tg   Target
		mod  int64
		body string
		want int64
	}{
		{a, 100, "x", 100},
		{a, 100, "x", 100},
		{a, 100, "y", 101},
		{a, 100, "z", 102},
		{a, 100, "z", 102},
		{b, 100, "y", 100},
		{a, 200, "w", 200},
	}
	for i, s := range steps {
		if got := vs.next(s.tg, s.mod, []byte(s.body)); got != s.want {
			t.Errorf("step %d: version %d, want %d", i, got, s.want)
		}
	}
}

func TestSignBody_CarriesTheEnvelopeWhereEachDialectDoes(t *testing.T) {
	seed := make([]byte, ed25519.SeedSize)
	key := ed25519.NewKeyFromSeed(seed)
	pub := key.Public().(ed25519.PublicKey)
	v := trust.NewVerifier([]trust.Key{{Public: pub, KID: trust.Thumbprint(pub)}}, 0)
	for dialect, unwrap := range map[string]func([]byte) []byte{
		config.DialectCMX3: func(b []byte) []byte {
			var entries []json.RawMessage
			if err := json.Unmarshal(b, &entries); err != nil || len(entries) != 1 {
				t.Fatalf("cmx3 body %s: want one entry (%v)", b, err)
			}
			return entries[0]
		},
		config.DialectCMP7: func(b []byte) []byte { return b },
	} {
		body, err := SignBody(key, dialect, Target{Token: "gw", Name: "n"}, []byte(`[1]`), 5)
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(unwrap(body), time.Now())
		if err != nil || c.Label() != "gw/n" || c.Version != 5 || string(c.Body) != `[1]` {
			t.Errorf("%s: %+v, %v", dialect, c, err)
		}
	}
}

// serve --sign-key: an agent that requires signatures takes what it serves, at the boot request
// and on every change, two changes within one second included.
func TestServe_SignKeySignsEveryConfigurationSent(t *testing.T) {
	b := mqtttest.Start(t)
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := trust.EncodePublicKey(key.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ops.pub"), pem, 0o644); err != nil {
		t.Fatal(err)
	}
	configs := t.TempDir()
	file := filepath.Join(configs, "gw-001.json")
	if err := os.WriteFile(file, []byte(`[{"a":1}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, ServeOptions{Options: Options{Broker: b.URL, AppVersion: testApp}, Configs: configs, SignKey: key})
	out := startAgentWith(t, b.URL, "gw-001", dir, "[trust]\nkeys = [\"ops.pub\"]\nrequire_signed = true\n")
	waitFile(t, out, `[{"a":1}]`)
	if c := s.next(t); !c.OK() {
		t.Fatalf("boot answer: %+v", c)
	}
	for _, body := range []string{`[{"a":2}]`, `[{"a":3}]`} {
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		waitFile(t, out, body)
		if c := s.next(t); !c.OK() {
			t.Fatalf("after a change to %s: %+v", body, c)
		}
	}
}

func TestSignBody_RefusesACMX3BodyThatIsNotAnArray(t *testing.T) {
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	if _, err := SignBody(key, config.DialectCMX3, Target{Token: "gw"}, []byte(`{"a":1}`), 1); err == nil || !strings.Contains(err.Error(), "not an array") {
		t.Errorf("SignBody of an object for cmx3: %v", err)
	}
}
