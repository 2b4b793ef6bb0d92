package main

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/sealed"
)

// The sealed-value tests run the real binary against mosquitto (CONTRACT section 6, "Sealed
// values"), with values sealed by Debian's age command where it is installed (an implementation the
// agent does not share code with), and search every place the secret must not reach.

const e2eSecret = "psk-9f3b2c71e0"

// sealValue seals the JSON value to recipient with `age -r RECIPIENT -a` when installed, else with
// the agent's own sealed.Seal (saying so), and returns the {"$sealed": ...} object.
func sealValue(t *testing.T, recipient, value string) string {
	t.Helper()
	if _, err := exec.LookPath("age"); err != nil {
		t.Logf("age is not installed (apt-get install age): sealing with sealed.Seal, no interop checked")
		obj, err := sealed.Seal(recipient, []byte(value))
		if err != nil {
			t.Fatal(err)
		}
		return string(obj)
	}
	cmd := exec.Command("age", "-r", recipient, "-a")
	cmd.Stdin = strings.NewReader(value)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("age -r %s -a: %v", recipient, err)
	}
	obj, _ := json.Marshal(map[string]string{"$sealed": string(out)})
	return string(obj)
}

// checkNoLeak fails when the secret is in a file under the state folder, the agent's log, a
// message on the broker, status --json, history --json or a support bundle.
func (e *crashEnv) checkNoLeak(t *testing.T, p *proc, secret string) {
	t.Helper()
	err := filepath.WalkDir(filepath.Join(e.dir, "state"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte(secret)) {
			t.Errorf("the secret is in %s", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(p.output(), secret) {
		t.Error("the secret is in the agent's log")
	}
	for _, m := range e.all.All() {
		if bytes.Contains(m.Payload, []byte(secret)) {
			t.Errorf("the secret is in a message at %s", m.Topic)
		}
	}
	for _, args := range [][]string{{"status", "--json"}, {"history", "--json"}} {
		out, _, code := runCLI(t, append(args, "--config", e.config)...)
		if code != 0 || strings.Contains(out, secret) {
			t.Errorf("%s: exit %d, the secret in it: %v", args[0], code, strings.Contains(out, secret))
		}
	}
	bundlePath := filepath.Join(t.TempDir(), "b.tar.gz")
	if _, stderr, code := runCLI(t, "bundle", "--config", e.config, "-o", bundlePath); code != 0 {
		t.Fatalf("bundle: exit %d, %s", code, stderr)
	}
	for name, content := range untar(t, bundlePath) {
		if strings.Contains(content, secret) {
			t.Errorf("the secret is in the bundle's %s", name)
		}
	}
}

func recipientOf(t *testing.T, config string) string {
	t.Helper()
	out, stderr, code := runCLI(t, "identity", "--config", config)
	if code != 0 {
		t.Fatalf("identity: exit %d, %s", code, stderr)
	}
	return strings.TrimSpace(out)
}

func TestSealed_CMX3OnTheRealBinary(t *testing.T) {
	e := newCrashEnvWith(t, "", `[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
mode = "0640"
`, "gw-001.json")
	p := startAgent(t, e.config)
	e.waitPull(t)
	rcpt := recipientOf(t, e.config)

	body := `[{"wifi":{"ssid":"home","password":` + sealValue(t, rcpt, `"`+e2eSecret+`"`) + `}}]`
	if st := e.push(t, 1, body); st != "ok" {
		t.Fatalf("sealed push: %q", st)
	}
	e.checkFile(t, `[{"wifi":{"ssid":"home","password":"`+e2eSecret+`"}}]`)
	if fi, err := os.Stat(e.output); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("output %v, %v; want mode 0640", fi, err)
	}
	other := sealValue(t, newRecipientFor(t), `"`+e2eSecret+`"`)
	if st := e.push(t, 2, `[{"wifi":{"password":`+other+`}}]`); st != "sealed value at $[0].wifi.password: does not decrypt with this gateway's identity (sealed to another recipient?)" {
		t.Errorf("sealed to another gateway: %q", st)
	}
	e.checkFile(t, `[{"wifi":{"ssid":"home","password":"`+e2eSecret+`"}}]`)

	// After kill -9 the same identity opens what was sealed before.
	p.kill(t)
	p = startAgent(t, e.config)
	e.waitPull(t)
	if got := recipientOf(t, e.config); got != rcpt {
		t.Fatalf("recipient after a restart %s, want %s", got, rcpt)
	}
	if st := e.push(t, 3, `[`+sealValue(t, rcpt, `{"user":"u","password":"`+e2eSecret+`"}`)+`]`); st != "ok" {
		t.Fatalf("after a restart: %q", st)
	}
	e.checkFile(t, `[{"user":"u","password":"`+e2eSecret+`"}]`)
	p.waitLine(t, "configuration applied")
	e.checkNoLeak(t, p, e2eSecret)
}

func TestSealed_CMP7OnTheRealBinary(t *testing.T) {
	e := newCrashEnvWith(t, "dialect = \"cmp7\"\n", `[[endpoint]]
token = "gw-001"
name = "modbus"
output = "out/modbus.json"
mode = "0600"
`, "modbus.json")
	p := startAgent(t, e.config)
	topic, _ := e.waitRequest(t)
	rcpt := recipientOf(t, e.config)
	body := `{"baud":9600,"key":` + sealValue(t, rcpt, `"`+e2eSecret+`"`) + `}`
	e.server.Publish(t, topic+"/status", 1, []byte(`{"configId":"k1","config":`+body+`}`))
	if a := e.waitApplied(t); a.ConfigID != "k1" || a.StatusCode != 200 {
		t.Fatalf("applied %+v, want k1 200", a)
	}
	e.checkFile(t, `{"baud":9600,"key":"`+e2eSecret+`"}`)
	bad := `{"baud":1,"key":{"$sealed":"-----BEGIN AGE ENCRYPTED FILE-----\nbm9wZQ==\n-----END AGE ENCRYPTED FILE-----\n"}}`
	e.server.Publish(t, e.prefix+"/config/json/modbus/status", 1, []byte(`{"configId":"k2","config":`+bad+`}`))
	if a := e.waitApplied(t); a.ConfigID != "k2" || a.StatusCode != 400 || !strings.HasPrefix(a.ReasonPhrase, "sealed value at $.key: damaged") {
		t.Errorf("applied %+v, want k2 400 naming $.key", a)
	}
	e.checkFile(t, `{"baud":9600,"key":"`+e2eSecret+`"}`)
	p.waitLine(t, "configuration applied")
	e.checkNoLeak(t, p, e2eSecret)
}

// newRecipientFor is another gateway's recipient.
func newRecipientFor(t *testing.T) string {
	t.Helper()
	id, err := sealed.Load(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	return id.Recipient()
}
