package engine

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/sealed"
	"github.com/cmx-agent/cmx-agent/trust"
)

const sealedSecret = "wifi-s3cret-7d1f"

// sealFor returns value sealed to the engine's recipient, as {"$sealed": ...}.
func (c *core) sealFor(value string) string {
	c.t.Helper()
	obj, err := sealed.Seal(c.e.Recipient(), []byte(value))
	if err != nil {
		c.t.Fatal(err)
	}
	return string(obj)
}

// leaks lists the files under dir whose bytes hold s.
func leaks(t testing.TB, dir, s string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if b, err := os.ReadFile(path); err != nil {
			return err
		} else if bytes.Contains(b, []byte(s)) {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// noLeak fails when the secret is in a file of the state folder, the engine's log or an answer the
// engine published (c.sent keeps them all).
func (c *core) noLeak(secret string) {
	c.t.Helper()
	if f := leaks(c.t, filepath.Join(c.dir, "state"), secret); len(f) > 0 {
		c.t.Errorf("the secret is in %q", f)
	}
	if strings.Contains(c.logs.String(), secret) {
		c.t.Errorf("the secret is in the log")
	}
	for {
		select {
		case m := <-c.sent:
			if bytes.Contains(m.Payload, []byte(secret)) {
				c.t.Errorf("the secret is in the answer at %s: %s", m.Topic, m.Payload)
			}
		default:
			return
		}
	}
}

func TestSealed_TheOutputHoldsTheValueTheStateOnlyTheSealedForm(t *testing.T) {
	t.Parallel()
	ep, hookRuns := withHookLog(t)
	ep.Mode = 0o640
	c := startCoreWith(t, coreOptions{}, ep)
	out := c.output("gw")
	body := `[{"wifi":{"ssid":"home","password":` + c.sealFor(`"`+sealedSecret+`"`) + `}}]`
	wantStatus(t, c.push("1", body), "ok")
	want := `[{"wifi":{"ssid":"home","password":"` + sealedSecret + `"}}]`
	wantFile(t, out, want)
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("output: %v, %v; want mode 0640", fi, err)
	}

	// The same sealed configuration again: unchanged, no write, no hook. A new encryption of the
	// same secret is a new configuration: written and hooked.
	wantStatus(t, c.push("2", body), "ok")
	wantStatus(t, c.push("3", `[{"wifi":{"ssid":"home","password":`+c.sealFor(`"`+sealedSecret+`"`)+`}}]`), "ok")
	if got := readLines(t, hookRuns); len(got) != 2 || !strings.HasPrefix(got[0], "1=") || !strings.HasPrefix(got[1], "3=") {
		t.Errorf("hook runs %q, want for 1 and 3 only", got)
	}

	// Drift repair decrypts again from the stored sealed form.
	if err := os.WriteFile(out, []byte("hand edit"), 0o640); err != nil {
		t.Fatal(err)
	}
	c.waitFile(out, want)
	c.waitRepairs("gw", 1)

	// A restart reads the sealed form back; the same configuration is still unchanged.
	c.restart()
	wantStatus(t, c.push("4", body), "ok")
	wantFile(t, out, want)
	c.noLeak(sealedSecret)
}

func TestSealed_RollbackRendersThePreviousSealedConfigurationAgain(t *testing.T) {
	t.Parallel()
	ep, _ := withHookLog(t) // the hook fails on an output holding "bad"
	ep.Mode = 0o600
	c := startCoreWith(t, coreOptions{}, ep)
	out := c.output("gw")
	wantStatus(t, c.push("1", `[{"pw":`+c.sealFor(`"`+sealedSecret+`"`)+`}]`), "ok")
	conf := c.push("2", `[{"pw":`+c.sealFor(`"bad"`)+`}]`)
	if !strings.Contains(conf.Status, "hook failed") || !strings.Contains(conf.Status, "rolled back to 1") {
		t.Fatalf("status %q, want the hook's failure and a rollback to 1", conf.Status)
	}
	wantFile(t, out, `[{"pw":"`+sealedSecret+`"}]`)
	c.noLeak(sealedSecret)
}

func TestSealed_RefusalsNameThePathAndChangeNothing(t *testing.T) {
	t.Parallel()
	other := sealedTo(t, newRecipient(t), `"`+sealedSecret+`"`)
	cases := []struct {
		name, body string
		mode       config.FileMode
		status     string
		kind       sealed.Kind // the refusal counted
	}{
		{"another gateway's recipient", `{"wifi":{"password":` + other + `}}`, 0o600,
			"sealed value at $.wifi.password: does not decrypt with this gateway's identity (sealed to another recipient?)", sealed.KindRecipient},
		{"not armored", `{"k":[{"$sealed":"hello"}]}`, 0o600,
			"sealed value at $.k[0]: not an ASCII-armored age file (-----BEGIN AGE ENCRYPTED FILE-----)", sealed.KindMalformed},
		{"an output others may read", `{"wifi":{"password":` + other + `}}`, 0o644,
			`sealed values: the output's mode 0644 lets others read it; an output holding decrypted values needs a mode without o+r (e.g. mode = "0640")`, sealed.KindMode},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := startCoreWith(t, coreOptions{Dialect: config.DialectCMP7}, config.Endpoint{Token: "gw", Mode: tc.mode})
			c.deliver(p+"/config/json/status", 1, `{"configId":"c1","config":`+tc.body+`}`)
			if code, id, reason := c.appliedReport(); code != 400 || id != "c1" || reason != tc.status {
				t.Errorf("report %d %s %q, want 400 c1 %q", code, id, reason, tc.status)
			}
			wantNoFile(t, c.output("gw"))
			c.noLeak(sealedSecret)
			got := c.e.SealedRefusals()
			for _, k := range sealed.Kinds {
				want := uint64(0)
				if k == tc.kind {
					want = 1
				}
				if got[k] != want {
					t.Errorf("sealed refusals of kind %s: %d, want %d", k, got[k], want)
				}
			}
		})
	}
}

func newRecipient(t testing.TB) string {
	id, err := sealed.Load(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	return id.Recipient()
}

func sealedTo(t testing.TB, rcpt, value string) string {
	obj, err := sealed.Seal(rcpt, []byte(value))
	if err != nil {
		t.Fatal(err)
	}
	return string(obj)
}

// Templates see the decrypted values; a signature covers the sealed form (signed after sealing).
func TestSealed_TemplatesSeeTheValueAndASignatureCoversTheSealedForm(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "wpa.conf.tmpl")
	if err := os.WriteFile(tmpl, []byte("{{range .}}ssid={{.ssid}}\npsk={{.psk}}\n{{end}}"), 0o644); err != nil {
		t.Fatal(err)
	}
	k := signer(1)
	c := startCoreWith(t, coreOptions{Trust: trustOf(k)}, config.Endpoint{Token: "gw", Template: tmpl, Mode: 0o600})
	body := `[{"ssid":"home","psk":` + c.sealFor(`"`+sealedSecret+`"`) + `}]`
	env := sign(t, k, trust.Payload{Token: "gw", Version: 1, Config: json.RawMessage(body)})
	wantStatus(t, c.pushSigned("1", env), "ok")
	wantFile(t, c.output("gw"), "ssid=home\npsk="+sealedSecret+"\n")
	wantStatus(t, c.pushSigned("2", env), "ok") // unchanged: the same signed, sealed configuration
	c.noLeak(sealedSecret)
}
