package trust

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

var b64 = base64.RawURLEncoding

// seedKey makes a deterministic key so that failures reproduce.
func seedKey(b byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = b
	}
	return ed25519.NewKeyFromSeed(seed)
}

func trusted(priv ...ed25519.PrivateKey) *Verifier {
	var keys []Key
	for _, p := range priv {
		pub := p.Public().(ed25519.PublicKey)
		keys = append(keys, Key{Public: pub, KID: Thumbprint(pub)})
	}
	return NewVerifier(keys, 0)
}

// handJWS builds a flattened JWS from RFC 7515 by hand: any header and payload text, signed
// with priv over the encoded segments.
func handJWS(priv ed25519.PrivateKey, header, payload string) string {
	p, q := b64.EncodeToString([]byte(header)), b64.EncodeToString([]byte(payload))
	sig := ed25519.Sign(priv, []byte(p+"."+q))
	return `{"protected":"` + p + `","payload":"` + q + `","signature":"` + b64.EncodeToString(sig) + `"}`
}

const goodPayload = `{"token":"gw-1","version":7,"id":42,"config":[{"a":1}]}`

var now = time.Unix(1_800_000_000, 0)

// RFC 8037 appendix A: the Ed25519 key, its thumbprint and the signature of "Example of
// Ed25519 signing" — an implementation that is not ours, by its published vectors.
func TestVerifier_AcceptsRFC8037Vector(t *testing.T) {
	x, _ := b64.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	pub := ed25519.PublicKey(x)
	if got, want := Thumbprint(pub), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"; got != want {
		t.Fatalf("thumbprint %s, want %s (RFC 8037 A.3)", got, want)
	}
	v := NewVerifier([]Key{{Public: pub, KID: Thumbprint(pub)}}, 0)
	s := signature{
		protected: "eyJhbGciOiJFZERTQSJ9",
		sig:       "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg",
	}
	if v.verifyOne(s, "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc", "") == nil {
		t.Fatal("RFC 8037 A.4 signature not verified")
	}
	s.sig = strings.Replace(s.sig, "hgy", "hgz", 1)
	if v.verifyOne(s, "RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc", "") != nil {
		t.Fatal("altered RFC 8037 signature verified")
	}
}

func TestVerifier_AcceptsFlattenedAndGeneralSerializations(t *testing.T) {
	signer, other := seedKey(1), seedKey(2)
	flat := handJWS(signer, `{"alg":"EdDSA","typ":"cmx-config+json"}`, goodPayload)
	var f map[string]string
	if err := json.Unmarshal([]byte(flat), &f); err != nil {
		t.Fatal(err)
	}
	bad := handJWS(other, `{"alg":"EdDSA"}`, goodPayload)
	var o map[string]string
	_ = json.Unmarshal([]byte(bad), &o)
	general := `{"payload":"` + f["payload"] + `","signatures":[` +
		`{"protected":"` + o["protected"] + `","signature":"` + o["signature"] + `"},` +
		`{"protected":"` + f["protected"] + `","header":{"kid":"` + Thumbprint(signer.Public().(ed25519.PublicKey)) + `"},"signature":"` + f["signature"] + `"}]}`
	for name, env := range map[string]string{"flattened": flat, "general, second signature trusted": general} {
		t.Run(name, func(t *testing.T) {
			c, err := trusted(signer).Verify([]byte(env), now)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if c.Token != "gw-1" || c.Name != "" || c.Version != 7 || string(c.ID) != "42" || string(c.Body) != `[{"a":1}]` {
				t.Fatalf("decoded %+v", c)
			}
			if c.KID != Thumbprint(signer.Public().(ed25519.PublicKey)) {
				t.Fatalf("kid %s", c.KID)
			}
		})
	}
}

func TestVerifier_RefusesWithTheRuleBroken(t *testing.T) {
	signer, stranger := seedKey(1), seedKey(2)
	strangerKID := Thumbprint(stranger.Public().(ed25519.PublicKey))
	good := handJWS(signer, `{"alg":"EdDSA"}`, goodPayload)
	var parts map[string]string
	_ = json.Unmarshal([]byte(good), &parts)
	hs := `{"protected":"` + b64.EncodeToString([]byte(`{"alg":"HS256"}`)) + `","payload":"` + parts["payload"] + `","signature":"AAAA"}`
	cases := []struct {
		name     string
		verifier *Verifier
		envelope string
		reason   Reason
		message  string
	}{
		{"not JSON", nil, `{"payload":`, ReasonMalformed, "signature: malformed envelope: not JSON"},
		{"an array", nil, `[]`, ReasonMalformed, "signature: malformed envelope: not an object"},
		{"no signature", nil, `{"protected":"e30","payload":"e30"}`, ReasonMalformed, `signature: malformed envelope: "signature" missing`},
		{"duplicate member", nil, `{"payload":"e30","payload":"e30","protected":"e30","signature":"AA"}`, ReasonMalformed, `member "payload" twice`},
		{"unknown member", nil, strings.Replace(good, `{`, `{"x":1,`, 1), ReasonMalformed, `unknown member "x"`},
		{"padded base64", nil, strings.Replace(good, parts["protected"], parts["protected"]+"=", 1), ReasonMalformed, "protected header is not base64url"},
		{"signatures beside signature", nil, `{"payload":"e30","signatures":[],"signature":"AA"}`, ReasonMalformed, `"signature" beside "signatures"`},
		{"empty signatures", nil, `{"payload":"e30","signatures":[]}`, ReasonMalformed, `"signatures" is not a non-empty array`},
		{"alg none", nil, handJWS(signer, `{"alg":"none"}`, goodPayload), ReasonAlgorithm, `signature: algorithm "none" not accepted (want EdDSA)`},
		{"alg HS256", nil, hs, ReasonAlgorithm, `signature: algorithm "HS256" not accepted (want EdDSA)`},
		{"alg missing", nil, handJWS(signer, `{}`, goodPayload), ReasonMalformed, `signature: malformed header: "alg" missing`},
		{"alg unprotected", nil, `{"protected":"e30","header":{"alg":"EdDSA"},"payload":"e30","signature":"AA"}`, ReasonMalformed, `"alg" in the unprotected header`},
		{"unknown crit", nil, handJWS(signer, `{"alg":"EdDSA","crit":["exp"],"exp":1}`, goodPayload), ReasonCritical, `signature: unknown critical header "exp"`},
		{"b64 crit", nil, handJWS(signer, `{"alg":"EdDSA","b64":false,"crit":["b64"]}`, goodPayload), ReasonCritical, `unknown critical header "b64"`},
		{"oversized", NewVerifier(trusted(signer).keys, 64), good, ReasonTooLarge, "over the limit of 64"},
		{"payload not an object", nil, handJWS(signer, `{"alg":"EdDSA"}`, `[1]`), ReasonPayload, "signature: payload is not a JSON object"},
		{"payload not JSON", nil, handJWS(signer, `{"alg":"EdDSA"}`, `Example`), ReasonPayload, "signature: payload is not a JSON object"},
		{"token missing", nil, handJWS(signer, `{"alg":"EdDSA"}`, `{"version":1,"config":[]}`), ReasonPayload, `signature: payload: "token" missing`},
		{"version missing", nil, handJWS(signer, `{"alg":"EdDSA"}`, `{"token":"t","config":[]}`), ReasonPayload, `signature: payload: "version" missing`},
		{"version zero", nil, handJWS(signer, `{"alg":"EdDSA"}`, `{"token":"t","version":0,"config":[]}`), ReasonPayload, `"version" 0, want an integer ≥ 1`},
		{"version fraction", nil, handJWS(signer, `{"alg":"EdDSA"}`, `{"token":"t","version":1.5,"config":[]}`), ReasonPayload, `"version" is not an integer`},
		{"config missing", nil, handJWS(signer, `{"alg":"EdDSA"}`, `{"token":"t","version":1}`), ReasonPayload, `"config" missing`},
		{"id an object", nil, handJWS(signer, `{"alg":"EdDSA"}`, `{"token":"t","version":1,"id":{},"config":[]}`), ReasonPayload, `"id" is neither a string nor a number`},
		{"stranger's key", nil, handJWS(stranger, `{"alg":"EdDSA"}`, goodPayload), ReasonUntrusted, "signature: not signed by a trusted key"},
		{"stranger's kid", nil, handJWS(stranger, `{"alg":"EdDSA","kid":"`+strangerKID+`"}`, goodPayload), ReasonUntrusted, "signature: not signed by a trusted key (kid " + strangerKID + ")"},
		{"trusted kid, stranger's signature", nil, handJWS(stranger, `{"alg":"EdDSA","kid":"`+Thumbprint(signer.Public().(ed25519.PublicKey))+`"}`, goodPayload), ReasonUntrusted, "not signed by a trusted key"},
		{"altered payload", nil, strings.Replace(good, parts["payload"], b64.EncodeToString([]byte(strings.Replace(goodPayload, "7", "8", 1))), 1), ReasonUntrusted, "not signed by a trusted key"},
		{"no keys configured", NewVerifier(nil, 0), good, ReasonUntrusted, "signature: not signed by a trusted key (no [trust] keys configured)"},
		{"expired", nil, handJWS(signer, `{"alg":"EdDSA"}`, `{"token":"t","version":3,"expires":1800000000,"config":[]}`), ReasonExpired, "signature: expired (at 2027-01-15T08:00:00Z, version 3)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.verifier
			if v == nil {
				v = trusted(signer)
			}
			c, err := v.Verify([]byte(tc.envelope), now)
			var refusal *Error
			if !errors.As(err, &refusal) {
				t.Fatalf("Verify = %+v, %v; want a refusal %q", c, err, tc.message)
			}
			if refusal.Reason != tc.reason || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("refusal %q (%s), want %q (%s)", err, refusal.Reason, tc.message, tc.reason)
			}
			if strings.Contains(err.Error(), b64.EncodeToString(signer.Public().(ed25519.PublicKey))) {
				t.Fatalf("refusal %q holds key material", err)
			}
		})
	}
}

func TestVerifier_AcceptsBeforeExpiry(t *testing.T) {
	signer := seedKey(1)
	c, err := trusted(signer).Verify([]byte(handJWS(signer, `{"alg":"EdDSA"}`, `{"token":"t","version":3,"expires":1800000001,"config":{}}`)), now)
	if err != nil || c.Expires != 1800000001 {
		t.Fatalf("Verify = %+v, %v", c, err)
	}
}

func TestConfig_CheckBindingRefusesAnotherTokenOrName(t *testing.T) {
	c := &Config{Token: "gw-1", Name: "net"}
	for _, tc := range []struct{ token, name, want string }{
		{"gw-1", "net", ""},
		{"gw-2", "net", `signature: for another token ("gw-1", this endpoint is "gw-2")`},
		{"gw-1", "", `signature: for another name ("net", this endpoint's is "")`},
	} {
		err := c.CheckBinding(tc.token, tc.name)
		if (err == nil && tc.want != "") || (err != nil && err.Error() != tc.want) {
			t.Errorf("CheckBinding(%q, %q) = %v, want %q", tc.token, tc.name, err, tc.want)
		}
	}
}

func TestCheckVersion_RefusesRollbackAndAnotherBodyAtTheSameVersion(t *testing.T) {
	for _, tc := range []struct {
		version, highest int64
		same             bool
		unchanged        bool
		want             string
	}{
		{5, 0, false, false, ""},
		{5, 4, false, false, ""},
		{5, 5, true, true, ""},
		{5, 5, false, false, "signature: version 5 already accepted with another config"},
		{4, 5, true, false, "signature: version 4 older than 5"},
	} {
		unchanged, err := CheckVersion(tc.version, tc.highest, tc.same)
		if unchanged != tc.unchanged || (err == nil) != (tc.want == "") || (err != nil && err.Error() != tc.want) {
			t.Errorf("CheckVersion(%d, %d, %v) = %v, %v; want %v, %q", tc.version, tc.highest, tc.same, unchanged, err, tc.unchanged, tc.want)
		}
	}
}

func TestIsEnvelope_TellsJWSFromPlainEntries(t *testing.T) {
	for in, want := range map[string]bool{
		`{"protected":"e30","payload":"e30","signature":"AA"}`: true,
		`{"payload":"e30","signatures":[]}`:                    true,
		`{"payload":"x"}`:                                      false,
		`{"payload":{"a":1},"signature":"sha256"}`:             false,
		`{"payload":"x","signature":{"alg":"sha256"}}`:         false,
		`{"Payload":"e30","Signature":"AA"}`:                   false,
		`{"a":1}`:                                              false,
		`[1]`:                                                  false,
		`"payload"`:                                            false,
	} {
		if got := IsEnvelope([]byte(in)); got != want {
			t.Errorf("IsEnvelope(%s) = %v, want %v", in, got, want)
		}
	}
}

func TestSign_OutputVerifiesWithTheSameBytesOfConfig(t *testing.T) {
	signer := seedKey(3)
	env, err := Sign(signer, Payload{Token: "gw-1", Name: "net", Version: 9, ID: json.RawMessage(`"a<b"`), Config: json.RawMessage(`{"html":"<&>"}`)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := trusted(signer).Verify(env, now)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if string(c.Body) != `{"html":"<&>"}` || c.Name != "net" || c.Version != 9 || string(c.ID) != `"a<b"` {
		t.Fatalf("decoded %+v body %s", c, c.Body)
	}
}

func FuzzVerify(f *testing.F) {
	signer := seedKey(1)
	good := handJWS(signer, `{"alg":"EdDSA","kid":"`+Thumbprint(signer.Public().(ed25519.PublicKey))+`"}`, goodPayload)
	f.Add([]byte(good))
	f.Add([]byte(handJWS(signer, `{"alg":"EdDSA","crit":["b64"]}`, goodPayload)))
	f.Add([]byte(`{"payload":"e30","signatures":[{"protected":"e30","signature":"AA"}]}`))
	f.Add([]byte(`{"protected":"e30","header":{"kid":"x"},"payload":"e30","signature":"AA"}`))
	v := trusted(signer)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := v.Verify(data, now)
		if err != nil {
			var refusal *Error
			if !errors.As(err, &refusal) || !strings.HasPrefix(err.Error(), "signature: ") {
				t.Fatalf("not a refusal: %v", err)
			}
			return
		}
		if c.Version < 1 || c.Token == "" || !json.Valid(c.Body) || c.KID == "" {
			t.Fatalf("accepted %+v", c)
		}
	})
}

// The cost a signed push adds to the agent, besides the larger payload.
func BenchmarkVerify(b *testing.B) {
	signer := seedKey(1)
	env, err := Sign(signer, Payload{Token: "gw-0001", Version: 7, Config: json.RawMessage(`[{"seq":7,"sampling_ms":500,"name":"bench","pad":"` + strings.Repeat("x", 180) + `"}]`)})
	if err != nil {
		b.Fatal(err)
	}
	v := trusted(signer)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(env, now); err != nil {
			b.Fatal(err)
		}
	}
}
