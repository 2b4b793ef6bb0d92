package main

import (
	"crypto"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/trust"
)

// keygen runs cmxctl keygen in a fresh folder and returns NAME (the path without extension).
func keygen(t *testing.T) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "ops")
	stdout, stderr, code := cmxctl(t, "keygen", "-o", name)
	if code != 0 {
		t.Fatalf("keygen: exit %d, %s", code, stderr)
	}
	k, err := trust.LoadKey(name + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "kid "+k.KID+"\n") {
		t.Fatalf("keygen printed %q, want the kid %s", stdout, k.KID)
	}
	return name
}

func TestKeygen_WritesAPrivateKeyOnlyItsOwnerReadsAndNeverOverwrites(t *testing.T) {
	name := keygen(t)
	for file, mode := range map[string]os.FileMode{name + ".key": 0o600, name + ".pub": 0o644} {
		fi, err := os.Stat(file)
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v mode %v, want %v", file, err, fi.Mode().Perm(), mode)
		}
	}
	key, _ := os.ReadFile(name + ".key")
	if !strings.HasPrefix(string(key), "-----BEGIN PRIVATE KEY-----\n") {
		t.Errorf("%s.key does not start as PKCS#8 PEM: %.40q", name, key)
	}
	_, stderr, code := cmxctl(t, "keygen", "-o", name)
	if code != 1 || !strings.Contains(stderr, "exists; keys are not overwritten") {
		t.Errorf("second keygen: exit %d, %q", code, stderr)
	}
	if again, _ := os.ReadFile(name + ".key"); string(again) != string(key) {
		t.Error("the private key changed")
	}
}

// cmxctl sign's output verifies with go-jose, an implementation that is not ours, and carries
// the payload the contract describes.
func TestSign_OutputVerifiesWithGoJose(t *testing.T) {
	name := keygen(t)
	stdout, stderr, code := cmxctl(t, "sign", "--key", name+".key", "--token", "gw-001", "--name", "net",
		"--version", "7", "--expires", "1h", "--id", "43", writeFile(t, `{"mtu": 1500}`))
	if code != 0 {
		t.Fatalf("sign: exit %d, %s", code, stderr)
	}
	jws, err := jose.ParseSignedJSON(strings.TrimSpace(stdout), []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatalf("go-jose parse: %v\n%s", err, stdout)
	}
	pub, err := trust.LoadKey(name + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	payload, err := jws.Verify(pub.Public)
	if err != nil {
		t.Fatalf("go-jose verify: %v", err)
	}
	sum, _ := (&jose.JSONWebKey{Key: pub.Public}).Thumbprint(crypto.SHA256)
	if kid := jws.Signatures[0].Protected.KeyID; kid != base64.RawURLEncoding.EncodeToString(sum) {
		t.Errorf("kid %s is not the key's RFC 7638 thumbprint", kid)
	}
	exp := time.Now().Add(time.Hour).Unix()
	for _, want := range []string{`"token":"gw-001"`, `"name":"net"`, `"version":7`, `"id":43`, `"config":{"mtu":1500}`} {
		if !strings.Contains(string(payload), want) {
			t.Errorf("payload %s lacks %s", payload, want)
		}
	}
	c, err := trust.NewVerifier([]trust.Key{pub}, 0).Verify([]byte(stdout), time.Now())
	if err != nil || c.Expires < exp-60 || c.Expires > exp+60 {
		t.Errorf("expires %d, want about %d (%v)", c.Expires, exp, err)
	}
}

// A key pair made by openssl signs through cmxctl sign, and the agent's verifier takes it with
// openssl's public key.
func TestSign_TakesAnOpensslKey(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	key, pub := filepath.Join(dir, "o.key"), filepath.Join(dir, "o.pub")
	for _, args := range [][]string{{"genpkey", "-algorithm", "ed25519", "-out", key}, {"pkey", "-in", key, "-pubout", "-out", pub}} {
		if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	stdout, stderr, code := cmxctl(t, "sign", "--key", key, "--token", "gw-001", writeFile(t, `[1]`))
	if code != 0 {
		t.Fatalf("sign: exit %d, %s", code, stderr)
	}
	k, err := trust.LoadKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	c, err := trust.NewVerifier([]trust.Key{k}, 0).Verify([]byte(stdout), time.Now())
	if err != nil || string(c.Body) != `[1]` || c.Version < time.Now().Unix()-60 {
		t.Fatalf("verify = %+v, %v; want config [1] at about the current Unix time", c, err)
	}
}

func TestSign_UsageErrorsExit2(t *testing.T) {
	name := keygen(t)
	for _, args := range [][]string{
		{"sign", "--token", "t", writeFile(t, `[]`)},
		{"sign", "--key", name + ".key", writeFile(t, `[]`)},
		{"sign", "--key", name + ".pub", "--token", "t", writeFile(t, `[]`)},
		{"sign", "--key", name + ".key", "--token", "t", writeFile(t, `not json`)},
		{"sign", "--key", name + ".key", "--token", "t", "--version", "-1", writeFile(t, `[]`)},
		{"keygen"},
	} {
		if _, _, code := cmxctl(t, args...); code != 2 {
			t.Errorf("cmxctl %q: exit %d, want 2", args, code)
		}
	}
}

// An agent requiring signatures takes a push signed with --sign-key and refuses the same push
// unsigned.
func TestPush_SignKeySignsForAnAgentThatRequiresSignatures(t *testing.T) {
	name := keygen(t)
	b := mqtttest.Start(t)
	dir := startAgent(t, b, `[trust]
keys = ["`+name+`.pub"]
require_signed = true
[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
`, "", "kp1/"+app+"/cmx/gw-001/pull/json")
	out := filepath.Join(dir, "out", "gw-001.json")
	common := []string{"push", "--broker", b.URL, "--app", app, "--token", "gw-001"}
	stdout, _, code := cmxctl(t, append(common, "--id", "1", writeFile(t, `[{"k":"unsigned"}]`))...)
	if code != 1 || !strings.Contains(stdout, `status="signature: unsigned but required"`) {
		t.Fatalf("unsigned push: exit %d, %q", code, stdout)
	}
	stdout, stderr, code := cmxctl(t, append(common, "--id", "2", "--sign-key", name+".key", writeFile(t, `[{"k":"signed"}]`))...)
	if code != 0 {
		t.Fatalf("signed push: exit %d, %q %q", code, stdout, stderr)
	}
	if got, err := os.ReadFile(out); err != nil || string(got) != `[{"k":"signed"}]` {
		t.Errorf("output %q (%v), want the payload's config", got, err)
	}
}
