package config

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/trust"
)

// writeTrustKeys writes ops.pub and ops2.pub (Ed25519 public keys), ops.key (a private key) and
// junk.pub beside the configuration at path.
func writeTrustKeys(t *testing.T, dir string) {
	t.Helper()
	for i, name := range []string{"ops", "ops2"} {
		seed := make([]byte, ed25519.SeedSize)
		seed[0] = byte(i + 1)
		priv := ed25519.NewKeyFromSeed(seed)
		pub, err := trust.EncodePublicKey(priv.Public().(ed25519.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		key, err := trust.EncodePrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		for file, data := range map[string][]byte{name + ".pub": pub, name + ".key": key} {
			if err := os.WriteFile(filepath.Join(dir, file), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "junk.pub"), []byte("not a key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParse_TrustKeysAreReadAtLoadAndAnEndpointCannotWaiveRequireSigned(t *testing.T) {
	path := writeConfig(t, kaaOK+"[trust]\nkeys = [\"ops.pub\", \"$DIR/ops2.pub\"]\nrequire_signed = true\n"+
		endpointOK+"[[endpoint]]\ntoken = \"gw-002\"\noutput = \"out/gw-002.json\"\nrequire_signed = false\n")
	writeTrustKeys(t, filepath.Dir(path))
	cfg := mustLoad(t, path)
	dir := filepath.Dir(path)
	if got := cfg.Trust.Keys; len(got) != 2 || got[0] != filepath.Join(dir, "ops.pub") || got[1] != filepath.Join(dir, "ops2.pub") {
		t.Fatalf("trust.keys = %v", got)
	}
	if len(cfg.Trust.Loaded) != 2 || cfg.Trust.Loaded[0].KID != trust.Thumbprint(cfg.Trust.Loaded[0].Public) || cfg.Trust.Loaded[0].KID == cfg.Trust.Loaded[1].KID {
		t.Fatalf("loaded keys %+v", cfg.Trust.Loaded)
	}
	if !cfg.Endpoints[0].RequireSigned || !cfg.Endpoints[1].RequireSigned {
		t.Fatalf("require_signed per endpoint = %v, %v; want true (inherited), true (its false does not waive [trust]'s)", cfg.Endpoints[0].RequireSigned, cfg.Endpoints[1].RequireSigned)
	}
	path = writeConfig(t, kaaOK+"[trust]\nkeys = [\"ops.pub\"]\n"+endpointOK+"require_signed = true\n"+
		"[[endpoint]]\ntoken = \"gw-002\"\noutput = \"out/gw-002.json\"\n")
	writeTrustKeys(t, filepath.Dir(path))
	cfg = mustLoad(t, path)
	if !cfg.Endpoints[0].RequireSigned || cfg.Endpoints[1].RequireSigned {
		t.Fatalf("require_signed per endpoint = %v, %v; want true (its own), false (default)", cfg.Endpoints[0].RequireSigned, cfg.Endpoints[1].RequireSigned)
	}
}

func TestParse_WithoutTrustNothingIsRequired(t *testing.T) {
	cfg := mustLoad(t, writeConfig(t, kaaOK+endpointOK))
	if len(cfg.Trust.Keys) != 0 || cfg.Trust.RequireSigned || cfg.Endpoints[0].RequireSigned {
		t.Fatalf("trust %+v, endpoint require_signed %v", cfg.Trust, cfg.Endpoints[0].RequireSigned)
	}
}

func TestParse_TrustProblemsNameTheKeyAndItsLine(t *testing.T) {
	cases := []struct {
		name, trust, endpoint string
		line                  int // of the problem, counted in the whole file
		problem               string
	}{
		{"missing file", "keys = [\n  \"ops.pub\",\n  \"gone.pub\",\n]\n", "", 4, "trust.keys[1]: read trusted key: open "},
		{"not PEM", "keys = [\"junk.pub\"]\n", "", 2, "trust.keys[0]: trusted key $DIR/junk.pub: no PEM block (want -----BEGIN PUBLIC KEY-----)"},
		{"private key", "keys = [\"ops.key\"]\n", "", 2, "holds a PRIVATE KEY, not a public key"},
		{"same key twice", "keys = [\"ops.pub\", \"./ops.pub\"]\n", "", 2, "trust.keys[1]: $DIR/ops.pub is the same key as trust.keys[0]"},
		{"empty path", "keys = [\"\"]\n", "", 2, "trust.keys[0]: must not be empty"},
		{"not an array", "keys = \"ops.pub\"\n", "", 2, "trust.keys: must be an array of strings, not string"},
		{"required with no keys", "require_signed = true\n", "", 2, "trust.require_signed: true, but trust.keys lists no key"},
		{"endpoint requires with no keys", "", "require_signed = true\n", 7, "endpoint #1 require_signed: true, but trust.keys lists no key"},
		{"unknown key", "key = []\n", "", 2, "unknown key trust.key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Line 1 is [trust], its keys follow; then [kaa] (2 lines) and the endpoint.
			path := writeConfig(t, "[trust]\n"+tc.trust+kaaOK+endpointOK+tc.endpoint)
			writeTrustKeys(t, filepath.Dir(path))
			ps := loadProblems(t, path)
			want := strings.ReplaceAll(tc.problem, "$DIR", filepath.Dir(path))
			for _, p := range ps {
				if strings.Contains(p.Msg, want) {
					if p.Line != tc.line {
						t.Fatalf("%q at line %d, want line %d", p.Msg, p.Line, tc.line)
					}
					return
				}
			}
			t.Fatalf("problems %v, want one saying %q", ps, want)
		})
	}
}
