package trust_test

import (
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/cmx-agent/cmx-agent/trust"
)

const payload = `{"token":"gw-1","name":"net","version":12,"id":"r-7","config":{"mtu":1500}}`

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func joseThumbprint(t *testing.T, pub ed25519.PublicKey) string {
	t.Helper()
	sum, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(sum)
}

// go-jose signs (flattened with one key, general with two), this package verifies.
func TestInterop_GoJoseSignsOurVerifierAccepts(t *testing.T) {
	pub, priv := newKey(t)
	_, strangerPriv := newKey(t)
	kid := joseThumbprint(t, pub)
	if kid != trust.Thumbprint(pub) {
		t.Fatalf("thumbprint %s, go-jose says %s", trust.Thumbprint(pub), kid)
	}
	one, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: priv, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("cmx-config+json"))
	if err != nil {
		t.Fatal(err)
	}
	two, err := jose.NewMultiSigner([]jose.SigningKey{
		{Algorithm: jose.EdDSA, Key: strangerPriv},
		{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: priv, KeyID: kid}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := trust.NewVerifier([]trust.Key{{Public: pub, KID: kid}}, 0)
	for name, signer := range map[string]jose.Signer{"flattened": one, "general": two} {
		t.Run(name, func(t *testing.T) {
			jws, err := signer.Sign([]byte(payload))
			if err != nil {
				t.Fatal(err)
			}
			c, err := v.Verify([]byte(jws.FullSerialize()), time.Now())
			if err != nil {
				t.Fatalf("Verify(%s): %v", jws.FullSerialize(), err)
			}
			if c.Label() != "gw-1/net" || c.Version != 12 || string(c.ID) != `"r-7"` || string(c.Body) != `{"mtu":1500}` || c.KID != kid {
				t.Fatalf("decoded %+v", c)
			}
		})
	}
}

// This package signs, go-jose verifies and reads the same payload.
func TestInterop_OurSignatureGoJoseAccepts(t *testing.T) {
	pub, priv := newKey(t)
	env, err := trust.Sign(priv, trust.Payload{Token: "gw-1", Version: 3, Expires: 4102444800, Config: json.RawMessage(`[{"k":"v"}]`)})
	if err != nil {
		t.Fatal(err)
	}
	jws, err := jose.ParseSignedJSON(string(env), []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatalf("go-jose parse: %v\n%s", err, env)
	}
	got, err := jws.Verify(pub)
	if err != nil {
		t.Fatalf("go-jose verify: %v", err)
	}
	if h := jws.Signatures[0].Protected; h.KeyID != joseThumbprint(t, pub) || h.ExtraHeaders["typ"] != "cmx-config+json" {
		t.Fatalf("header %+v", h)
	}
	if string(got) != `{"token":"gw-1","version":3,"expires":4102444800,"config":[{"k":"v"}]}` {
		t.Fatalf("payload %s", got)
	}
}

// openssl makes the key pair; the agent reads openssl's public key and a signature made with the
// private key openssl wrote (read back as PKCS#8) verifies.
func TestInterop_OpensslKeysAreReadAndVerify(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	keyPath, pubPath := filepath.Join(dir, "ops.key"), filepath.Join(dir, "ops.pub")
	for _, args := range [][]string{
		{"genpkey", "-algorithm", "ed25519", "-out", keyPath},
		{"pkey", "-in", keyPath, "-pubout", "-out", pubPath},
	} {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	k, err := trust.LoadKey(pubPath)
	if err != nil {
		t.Fatalf("LoadKey: %v", err)
	}
	if k.KID != joseThumbprint(t, k.Public) {
		t.Fatalf("kid %s, go-jose says %s", k.KID, joseThumbprint(t, k.Public))
	}
	pemKey, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := trust.ParsePrivateKey(pemKey)
	if err != nil {
		t.Fatalf("ParsePrivateKey: %v", err)
	}
	env, err := trust.Sign(priv, trust.Payload{Token: "gw-1", Version: 1, Config: json.RawMessage(`[]`)})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := trust.NewVerifier([]trust.Key{k}, 0).Verify(env, time.Now()); err != nil || c.KID != k.KID {
		t.Fatalf("Verify = %+v, %v", c, err)
	}
	// The private key listed by mistake is refused, saying so, without its bytes.
	_, err = trust.LoadKey(keyPath)
	if err == nil || err.Error() != "trusted key "+keyPath+": holds a PRIVATE KEY, not a public key: list the .pub file and keep the private key offline" {
		t.Fatalf("LoadKey(private) = %v", err)
	}
}
