package engine

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/store"
	"github.com/cmx-agent/cmx-agent/trust"
)

// signer is a deterministic Ed25519 key for the tests.
func signer(b byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	seed[0] = b
	return ed25519.NewKeyFromSeed(seed)
}

func trustOf(keys ...ed25519.PrivateKey) config.Trust {
	var tr config.Trust
	for _, k := range keys {
		pub := k.Public().(ed25519.PublicKey)
		tr.Keys = append(tr.Keys, "test.pub")
		tr.Loaded = append(tr.Loaded, trust.Key{Public: pub, KID: trust.Thumbprint(pub)})
	}
	return tr
}

// sign makes a signed configuration of config for token (and name) at version.
func sign(t testing.TB, k ed25519.PrivateKey, p trust.Payload) string {
	t.Helper()
	env, err := trust.Sign(k, p)
	if err != nil {
		t.Fatal(err)
	}
	return string(env)
}

func (c *core) pushSigned(id string, env string) confirmation {
	c.t.Helper()
	return c.push(id, "["+env+"]")
}

func (c *core) accepted(key string) store.Accepted {
	c.t.Helper()
	return readStore(c, func(tx *store.Tx) (store.Accepted, error) { return tx.Accepted(key) })
}

func TestSigned_CMX3WritesThePayloadsConfigAndRefusesRollbackAcrossRestarts(t *testing.T) {
	t.Parallel()
	k := signer(1)
	c := startCoreWith(t, coreOptions{Trust: trustOf(k)}, config.Endpoint{Token: "gw"})
	out := c.output("gw")
	v5 := sign(t, k, trust.Payload{Token: "gw", Version: 5, Config: json.RawMessage(`[{"v":5}]`)})
	if conf := c.pushSigned("1", v5); conf.Status != "ok" {
		t.Fatalf("signed push: %q", conf.Status)
	}
	c.waitFile(out, `[{"v":5}]`)
	if a := c.accepted("gw"); a.Version != 5 || a.KID != trust.Thumbprint(k.Public().(ed25519.PublicKey)) {
		t.Fatalf("accepted %+v", a)
	}

	c.restart()
	for _, tc := range []struct {
		id, env, status string
	}{
		{"2", sign(t, k, trust.Payload{Token: "gw", Version: 4, Config: json.RawMessage(`[{"v":4}]`)}), "signature: version 4 older than 5"},
		{"3", sign(t, k, trust.Payload{Token: "gw", Version: 5, Config: json.RawMessage(`[{"v":"5b"}]`)}), "signature: version 5 already accepted with another config"},
		{"4", v5, "ok"}, // the same version and config: unchanged
	} {
		if conf := c.pushSigned(tc.id, tc.env); conf.Status != tc.status {
			t.Errorf("push %s: status %q, want %q", tc.id, conf.Status, tc.status)
		}
		c.waitFile(out, `[{"v":5}]`)
	}
	if got := c.e.SignatureRefusals()[trust.ReasonRollback]; got != 2 {
		t.Errorf("rollback refusals counted %d, want 2", got)
	}
	if conf := c.pushSigned("5", sign(t, k, trust.Payload{Token: "gw", Version: 6, Config: json.RawMessage(`[6]`)})); conf.Status != "ok" {
		t.Fatalf("version 6: %q", conf.Status)
	}
	c.waitFile(out, `[6]`)
	if a := c.accepted("gw"); a.Version != 6 {
		t.Fatalf("accepted %+v, want version 6", a)
	}
}

func TestSigned_CMX3RefusalsWriteNothingAndSayWhichRule(t *testing.T) {
	t.Parallel()
	k, stranger := signer(1), signer(2)
	strangerKID := trust.Thumbprint(stranger.Public().(ed25519.PublicKey))
	good := func(v int64) string {
		return sign(t, k, trust.Payload{Token: "gw", Version: v, Config: json.RawMessage(`[1]`)})
	}
	cases := []struct {
		name    string
		trust   config.Trust
		require bool
		entries string
		status  string
		reason  trust.Reason
	}{
		{"a stranger's key", trustOf(k), false, "[" + sign(t, stranger, trust.Payload{Token: "gw", Version: 1, Config: json.RawMessage(`[1]`)}) + "]",
			"signature: not signed by a trusted key (kid " + strangerKID + ")", trust.ReasonUntrusted},
		{"no keys configured", config.Trust{}, false, "[" + good(1) + "]", "signature: not signed by a trusted key (no [trust] keys configured)", trust.ReasonUntrusted},
		{"another token", trustOf(k), false, "[" + sign(t, k, trust.Payload{Token: "gw-2", Version: 1, Config: json.RawMessage(`[1]`)}) + "]",
			`signature: for another token ("gw-2", this endpoint is "gw")`, trust.ReasonBinding},
		{"expired", trustOf(k), false, "[" + sign(t, k, trust.Payload{Token: "gw", Version: 1, Expires: 1000, Config: json.RawMessage(`[1]`)}) + "]",
			"signature: expired (at 1970-01-01T00:16:40Z, version 1)", trust.ReasonExpired},
		{"config not an array", trustOf(k), false, "[" + sign(t, k, trust.Payload{Token: "gw", Version: 1, Config: json.RawMessage(`{"a":1}`)}) + "]",
			"signature: payload: config must be an array (the entries written to the output)", trust.ReasonPayload},
		{"not the only entry", trustOf(k), false, "[" + good(1) + ",2]", "signature: a signed configuration must be the only element of entries", trust.ReasonMalformed},
		{"alg none", trustOf(k), false, `[{"protected":"eyJhbGciOiJub25lIn0","payload":"e30","signature":""}]`, `signature: algorithm "none" not accepted (want EdDSA)`, trust.ReasonAlgorithm},
		{"unsigned but required", trustOf(k), true, `[1]`, "signature: unsigned but required", trust.ReasonUnsigned},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := startCoreWith(t, coreOptions{Trust: tc.trust}, config.Endpoint{Token: "gw", RequireSigned: tc.require})
			conf := c.push("7", tc.entries)
			if conf.Status != tc.status {
				t.Fatalf("status %q, want %q", conf.Status, tc.status)
			}
			if _, err := os.Stat(c.output("gw")); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("output written after a refusal: %v", err)
			}
			if got := c.e.SignatureRefusals()[tc.reason]; got != 1 {
				t.Errorf("refusals counted for %s: %d, want 1", tc.reason, got)
			}
			// The same id again is answered with the stored refusal, still writing nothing.
			if conf := c.push("7", tc.entries); conf.Status != tc.status {
				t.Fatalf("again: status %q, want %q", conf.Status, tc.status)
			}
		})
	}
}

func TestSigned_UnsignedPassesWhenNotRequired(t *testing.T) {
	t.Parallel()
	c := startCoreWith(t, coreOptions{Trust: trustOf(signer(1))}, config.Endpoint{Token: "gw"})
	// Entries that merely have members named like a JWS's are not taken for one.
	for i, entries := range []string{`[{"payload":"x"}]`, `[{"payload":{"a":1},"signature":"sha256"}]`} {
		if conf := c.push(fmt.Sprint(i+1), entries); conf.Status != "ok" {
			t.Fatalf("unsigned push %s: %q", entries, conf.Status)
		}
		c.waitFile(c.output("gw"), entries)
	}
}

// appliedReport returns the next applied report: its statusCode, configId and reasonPhrase.
func (c *core) appliedReport() (int, string, string) {
	c.t.Helper()
	m := c.next("")
	for !strings.Contains(m.Topic, "/applied/") {
		m = c.next("")
	}
	var a struct {
		ConfigID     string `json:"configId"`
		StatusCode   int    `json:"statusCode"`
		ReasonPhrase string `json:"reasonPhrase"`
	}
	if err := json.Unmarshal(m.Payload, &a); err != nil {
		c.t.Fatalf("applied report %q: %v", m.Payload, err)
	}
	return a.StatusCode, a.ConfigID, a.ReasonPhrase
}

func TestSigned_CMP7AppliesTheConfigAndRefusesWith403(t *testing.T) {
	t.Parallel()
	k, stranger := signer(1), signer(2)
	c := startCoreWith(t, coreOptions{Dialect: config.DialectCMP7, Trust: trustOf(k)}, config.Endpoint{Token: "gw", Name: "net"})
	out := c.output("gw/net")
	env := sign(t, k, trust.Payload{Token: "gw", Name: "net", Version: 2, Config: json.RawMessage(`{"mtu":1500}`)})
	c.deliver(p+"/config/json/net/status", 1, `{"configId":"c1","config":`+env+`}`)
	if code, id, _ := c.appliedReport(); code != 200 || id != "c1" {
		t.Fatalf("report %d %s, want c1 applied", code, id)
	}
	c.waitFile(out, `{"mtu":1500}`)

	for _, tc := range []struct {
		env, reason string
	}{
		{sign(t, stranger, trust.Payload{Token: "gw", Name: "net", Version: 3, Config: json.RawMessage(`{}`)}), "signature: not signed by a trusted key"},
		{sign(t, k, trust.Payload{Token: "gw", Version: 3, Config: json.RawMessage(`{}`)}), `signature: for another name ("", this endpoint's is "net")`},
		{sign(t, k, trust.Payload{Token: "gw", Name: "net", Version: 1, Config: json.RawMessage(`{}`)}), "signature: version 1 older than 2"},
	} {
		c.deliver(p+"/config/json/net/status", 1, `{"configId":"c2","config":`+tc.env+`}`)
		code, id, reason := c.appliedReport()
		if code != 403 || id != "c2" || !strings.HasPrefix(reason, tc.reason) {
			t.Errorf("report %d %s %q, want 403 c2 %q", code, id, reason, tc.reason)
		}
	}
	c.waitFile(out, `{"mtu":1500}`)
}

func TestSigned_AReloadWithTheSignersKeyAcceptsWhatWasRefused(t *testing.T) {
	t.Parallel()
	k := signer(1)
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw"})
	env := sign(t, k, trust.Payload{Token: "gw", Version: 1, Config: json.RawMessage(`[1]`)})
	if conf := c.pushSigned("1", env); !strings.HasPrefix(conf.Status, "signature: not signed by a trusted key") {
		t.Fatalf("before the reload: %q", conf.Status)
	}
	c.e.SetTrust(trustOf(k).Loaded)
	if conf := c.pushSigned("2", env); conf.Status != "ok" {
		t.Fatalf("after the reload: %q", conf.Status)
	}
	c.waitFile(c.output("gw"), `[1]`)
	c.e.SetTrust(nil) // the key removed: revoked
	if conf := c.pushSigned("3", sign(t, k, trust.Payload{Token: "gw", Version: 2, Config: json.RawMessage(`[2]`)})); !strings.HasPrefix(conf.Status, "signature: not signed by a trusted key") {
		t.Fatalf("after removing the key: %q", conf.Status)
	}
}

// An older version arriving while a newer one is being applied would supersede it: refused.
func TestSigned_AnOlderVersionDoesNotSupersedeANewerOneInFlight(t *testing.T) {
	t.Parallel()
	k := signer(1)
	blocked, release, pause := holdFirstWrite()
	// The refusal's answer waits for the apply in progress, held at most the hold bound.
	c := startCoreWith(t, coreOptions{Trust: trustOf(k), Pause: pause, HoldBound: 50 * time.Millisecond}, config.Endpoint{Token: "gw"})
	releaseOnce := releaseOnCleanup(t, release)
	out := c.output("gw")
	r := c.deliver(p+"/json", 1, `{"id":1,"entries":[`+sign(t, k, trust.Payload{Token: "gw", Version: 9, Config: json.RawMessage(`[9]`)})+`]}`)
	select {
	case <-blocked:
	case <-time.After(testWait):
		t.Fatal("the first apply did not start")
	}
	conf := c.send(Message{Topic: p + "/json", QoS: 1, Payload: []byte(`{"id":2,"entries":[` + sign(t, k, trust.Payload{Token: "gw", Version: 8, Config: json.RawMessage(`[8]`)}) + `]}`)})
	releaseOnce()
	waitReceipt(t, r)
	if conf.Status != "signature: version 8 older than 9" {
		t.Fatalf("older push: %q", conf.Status)
	}
	c.waitFile(out, `[9]`)
}

// A signed offer stored as pending keeps its version, so that its result records it after a
// restart.
func TestSigned_APendingSignedOfferKeepsItsVersionInTheDatabase(t *testing.T) {
	t.Parallel()
	k := signer(1)
	c := startCoreWith(t, coreOptions{Trust: trustOf(k), Unsent: true}, config.Endpoint{Token: "gw"})
	o := &store.Offer{Seq: 1, Body: []byte(`[1]`), Signed: &store.Signed{Version: 3, Hash: store.Hash([]byte(`[1]`)), KID: "k"}}
	if err := c.e.store.Update(func(tx *store.Tx) error { return tx.SetPending("gw", o) }); err != nil {
		t.Fatal(err)
	}
	got := c.pendingOf("gw")
	if len(got) != 1 || got[0].Signed == nil || *got[0].Signed != *o.Signed {
		t.Fatalf("pending %+v", got)
	}
}

// The history shows each signed configuration's version.
func TestSigned_TheHistoryShowsTheVersion(t *testing.T) {
	t.Parallel()
	k := signer(1)
	c := startCoreWith(t, coreOptions{Trust: trustOf(k)}, config.Endpoint{Token: "gw"})
	if conf := c.pushSigned("1", sign(t, k, trust.Payload{Token: "gw", Version: 42, Config: json.RawMessage(`[1]`)})); conf.Status != "ok" {
		t.Fatalf("signed push: %q", conf.Status)
	}
	c.waitLog("configuration applied", 1)
	hs, err := c.e.History("gw")
	if err != nil || len(hs) != 1 || len(hs[0].Entries) != 1 || hs[0].Entries[0].Version != 42 {
		t.Errorf("history %+v, %v; want one entry of version 42", hs, err)
	}
}
