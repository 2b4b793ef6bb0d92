package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/cmx-agent/cmx-agent/agent"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/trust"
)

// The signed-configuration tests run the real binary against mosquitto (CONTRACT section 6):
// signatures made by go-jose (a JOSE implementation that is not ours) and keys made by openssl
// where it is installed.

// signingKey makes a key pair in dir: NAME.pub for the agent (by openssl when installed, as an
// operator would) and the private key for the test to sign with.
func signingKey(t *testing.T, dir, name string) ed25519.PrivateKey {
	t.Helper()
	keyPath, pubPath := filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	if _, err := exec.LookPath("openssl"); err == nil {
		for _, args := range [][]string{{"genpkey", "-algorithm", "ed25519", "-out", keyPath}, {"pkey", "-in", keyPath, "-pubout", "-out", pubPath}} {
			if out, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
				t.Fatalf("openssl %v: %v\n%s", args, err, out)
			}
		}
		b, err := os.ReadFile(keyPath)
		if err != nil {
			t.Fatal(err)
		}
		k, err := trust.ParsePrivateKey(b)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := trust.EncodePublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return priv
}

// joseSign signs a payload with go-jose (flattened JSON serialization).
func joseSign(t *testing.T, k ed25519.PrivateKey, p trust.Payload) string {
	t.Helper()
	payload, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: k}, nil)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	return jws.FullSerialize()
}

// push publishes a cmx3 push of entries with id and returns the status of its confirmation.
func (e *crashEnv) push(t *testing.T, id int, entries string) string {
	t.Helper()
	e.server.Publish(t, e.prefix+"/json", 1, fmt.Appendf(nil, `{"id":%d,"entries":%s}`, id, entries))
	return e.waitConfirmation(t, fmt.Sprint(id))
}

const signedEndpoint = `[trust]
keys = ["ops.pub"]
require_signed = true
[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
`

func TestSigned_CMX3OnTheRealBinary(t *testing.T) {
	e := newCrashEnvWith(t, "", signedEndpoint, "gw-001.json")
	ops := signingKey(t, e.dir, "ops")
	p := startAgent(t, e.config)
	e.waitPull(t)

	entries := func(k ed25519.PrivateKey, version int64, config string) string {
		return "[" + joseSign(t, k, trust.Payload{Token: "gw-001", Version: version, Config: json.RawMessage(config)}) + "]"
	}
	if st := e.push(t, 1, entries(ops, 5, `[{"v":5}]`)); st != "ok" {
		t.Fatalf("signed push: %q", st)
	}
	e.checkFile(t, `[{"v":5}]`)
	for _, tc := range []struct {
		id      int
		entries string
		status  string
	}{
		{2, `[{"v":"unsigned"}]`, "signature: unsigned but required"},
		{3, entries(ops, 4, `[{"v":4}]`), "signature: version 4 older than 5"},
		{4, `[{"protected":"eyJhbGciOiJIUzI1NiJ9","payload":"e30","signature":"AAAA"}]`, `signature: algorithm "HS256" not accepted (want EdDSA)`},
	} {
		if st := e.push(t, tc.id, tc.entries); st != tc.status {
			t.Errorf("push %d: %q, want %q", tc.id, st, tc.status)
		}
	}
	e.checkFile(t, `[{"v":5}]`)

	// Anti-rollback survives kill -9.
	p.kill(t)
	p = startAgent(t, e.config)
	e.waitPull(t)
	if st := e.push(t, 5, entries(ops, 4, `[{"v":4}]`)); st != "signature: version 4 older than 5" {
		t.Errorf("after a restart: %q", st)
	}

	// Rotation: a new key is added, then the old one removed; SIGHUP reloads the keys.
	ops2 := signingKey(t, e.dir, "ops2")
	reload := func(keys string) {
		t.Helper()
		replaceConfig(t, e.config, regexp.MustCompile(`(?m)^keys = .*$`).ReplaceAllLiteralString(mustRead(t, e.config), keys))
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	reload(`keys = ["ops.pub", "ops2.pub"]`)
	p.waitLine(t, `msg="trusted keys" keys=2`)
	if st := e.push(t, 6, entries(ops2, 6, `[{"v":6}]`)); st != "ok" {
		t.Fatalf("signed with the added key: %q", st)
	}
	reload(`keys = ["ops2.pub"]`)
	p.waitLine(t, `msg="trusted keys" keys=1`)
	if st := e.push(t, 7, entries(ops, 7, `[{"v":7}]`)); !strings.HasPrefix(st, "signature: not signed by a trusted key") {
		t.Errorf("signed with the removed key: %q", st)
	}
	e.checkFile(t, `[{"v":6}]`)
	mf, err := exec.Command(binary(t), "status", "--config", e.config, "--json").Output()
	if err != nil || !bytes.Contains(mf, []byte(`"signed_version": 6`)) || !bytes.Contains(mf, []byte(`"require_signed": true`)) {
		t.Errorf("status --json: %v\n%s", err, mf)
	}
	text, err := exec.Command(binary(t), "status", "--config", e.config).Output()
	if err != nil || !bytes.Contains(text, []byte("\nsigned:  gw-001 highest version accepted 6; unsigned configurations refused\n")) {
		t.Errorf("status: %v\n%s", err, text)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSigned_CMP7OnTheRealBinary(t *testing.T) {
	e := newCrashEnvWith(t, "dialect = \"cmp7\"\n", `[trust]
keys = ["ops.pub"]
[[endpoint]]
token = "gw-001"
name = "modbus"
output = "out/modbus.json"
`, "modbus.json")
	ops := signingKey(t, e.dir, "ops")
	startAgent(t, e.config)
	topic, _ := e.waitRequest(t)
	env := joseSign(t, ops, trust.Payload{Token: "gw-001", Name: "modbus", Version: 2, Config: json.RawMessage(`{"baud":9600}`)})
	e.server.Publish(t, topic+"/status", 1, []byte(`{"configId":"k2","config":`+env+`}`))
	if a := e.waitApplied(t); a.ConfigID != "k2" || a.StatusCode != 200 {
		t.Fatalf("applied %+v, want k2 200", a)
	}
	e.checkFile(t, `{"baud":9600}`)
	other := joseSign(t, ops, trust.Payload{Token: "gw-002", Name: "modbus", Version: 3, Config: json.RawMessage(`{}`)})
	e.server.Publish(t, e.prefix+"/config/json/modbus/status", 1, []byte(`{"configId":"k3","config":`+other+`}`))
	if a := e.waitApplied(t); a.ConfigID != "k3" || a.StatusCode != 403 || a.ReasonPhrase != `signature: for another token ("gw-002", this endpoint is "gw-001")` {
		t.Errorf("applied %+v, want k3 403 for another token", a)
	}
	e.checkFile(t, `{"baud":9600}`)
}

// Import with the broker down: applied at once, confirmed to the server once it is back.
func TestImport_OfflineAppliesAndTheServerLearnsOnceConnected(t *testing.T) {
	e := newCrashEnvWith(t, "", signedEndpoint, "gw-001.json")
	ops := signingKey(t, e.dir, "ops")
	srv := e.broker.Client(t, mqtttest.WithClientID("signed-server"), mqtttest.WithPersistentSession())
	confs := srv.Subscribe(t, e.prefix+"/json/status", 1)
	p := startAgent(t, e.config)
	e.waitPull(t)
	e.broker.Stop(t)
	p.waitLine(t, "connection to broker lost")

	file := filepath.Join(e.dir, "usb.jws")
	list := "[" + joseSign(t, ops, trust.Payload{Token: "gw-001", Version: 8, ID: json.RawMessage(`"usb-8"`), Config: json.RawMessage(`[8]`)}) + "," +
		joseSign(t, ops, trust.Payload{Token: "gw-001", Version: 7, Config: json.RawMessage(`[7]`)}) + "]"
	if err := os.WriteFile(file, []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	unsigned := filepath.Join(e.dir, "plain.json")
	if err := os.WriteFile(unsigned, []byte(`[1]`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary(t), "import", "--config", e.config, file, unsigned)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	want := "gw-001 version 8: ok\ngw-001 version 7: signature: version 7 older than 8\n" + unsigned + ": signature: not a signed configuration (import takes only JWS objects)\n"
	if code := cmd.ProcessState.ExitCode(); code != 1 || stdout.String() != want {
		t.Fatalf("import: exit %d (%v), stdout %q, stderr %q; want 1 and\n%s", code, err, stdout.String(), stderr.String(), want)
	}
	e.checkFile(t, `[8]`)

	e.broker.Start(t)
	m := confs.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return true })
	if string(m.Payload) != `{"id":"usb-8","status":"ok"}` || m.QoS != 1 {
		t.Errorf("confirmation %s, want {\"id\":\"usb-8\",\"status\":\"ok\"} at QoS 1", m)
	}

	// Again through --socket, without the configuration file: the one in place is ok again.
	again := exec.Command(binary(t), "import", "--socket", filepath.Join(e.dir, "state", "agent.sock"), file)
	out, _ := again.Output()
	if !strings.HasPrefix(string(out), "gw-001 version 8: ok\n") || again.ProcessState.ExitCode() != 1 {
		t.Errorf("import --socket: exit %d, %q", again.ProcessState.ExitCode(), out)
	}

	// Usage: no file is exit 2; an agent that does not answer is exit 1.
	if code := exitOf(exec.Command(binary(t), "import", "--config", e.config)); code != 2 {
		t.Errorf("import without FILE: exit %d, want 2", code)
	}
	p.kill(t)
	if code := exitOf(exec.Command(binary(t), "import", "--config", e.config, file)); code != 1 {
		t.Errorf("import with no agent: exit %d, want 1", code)
	}
}

func exitOf(cmd *exec.Cmd) int {
	cmd.Run()
	return cmd.ProcessState.ExitCode()
}

// kill -9 at each durable step of a signed push, on both paths: after the restart it is applied
// and confirmed, and its version is the one anti-rollback holds (a recovered offer keeps it).
func TestCrash_SignedPushAtEachStepKeepsItsVersion(t *testing.T) {
	paths := []struct{ name, hook string }{{"held", ""}, {"committed", "hook = [\"true\"]\n"}}
	for _, path := range paths {
		for _, step := range []string{agent.StepReceived, agent.StepSynced, agent.StepRenamed, agent.StepCommitted} {
			t.Run(path.name+"/"+step, func(t *testing.T) {
				e := newCrashEnvWith(t, "", signedEndpoint+path.hook, "gw-001.json")
				ops := signingKey(t, e.dir, "ops")
				entries := func(version int64) string {
					return "[" + joseSign(t, ops, trust.Payload{Token: "gw-001", Version: version, Config: json.RawMessage(fmt.Sprintf(`[%d]`, version))}) + "]"
				}
				p := startAgent(t, e.config, "CMX_AGENT_TEST_PAUSE="+step)
				e.waitPull(t)
				e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":1,"entries":`+entries(5)+`}`))
				p.waitLine(t, "test pause at "+step)
				p.kill(t)

				startAgent(t, e.config)
				if s := e.waitConfirmation(t, "1"); s != "ok" {
					t.Fatalf("status after restart = %q, want ok", s)
				}
				e.checkFile(t, `[5]`)
				if s := e.push(t, 2, entries(4)); s != "signature: version 4 older than 5" {
					t.Errorf("older version after the crash: %q", s)
				}
				e.checkFile(t, `[5]`)
			})
		}
	}
}

// kill -9 during an import's apply: the import is stored on arrival, so the restarted agent
// applies it and the server gets its confirmation; the importer is told it did not finish.
func TestCrash_ImportIsAppliedAfterARestart(t *testing.T) {
	for _, step := range []string{agent.StepSynced, agent.StepRenamed} {
		t.Run(step, func(t *testing.T) {
			e := newCrashEnvWith(t, "", signedEndpoint, "gw-001.json")
			ops := signingKey(t, e.dir, "ops")
			file := filepath.Join(e.dir, "usb.jws")
			env := joseSign(t, ops, trust.Payload{Token: "gw-001", Version: 3, ID: json.RawMessage(`33`), Config: json.RawMessage(`[3]`)})
			if err := os.WriteFile(file, []byte(env), 0o644); err != nil {
				t.Fatal(err)
			}
			p := startAgent(t, e.config, "CMX_AGENT_TEST_PAUSE="+step)
			e.waitPull(t)
			imp := exec.Command(binary(t), "import", "--config", e.config, file)
			var stdout bytes.Buffer
			imp.Stdout = &stdout
			if err := imp.Start(); err != nil {
				t.Fatal(err)
			}
			p.waitLine(t, "test pause at "+step)
			p.kill(t)
			imp.Wait()
			if code := imp.ProcessState.ExitCode(); code != 1 {
				t.Errorf("import cut by the crash: exit %d (%s), want 1", code, stdout.String())
			}

			startAgent(t, e.config)
			if s := e.waitConfirmation(t, "33"); s != "ok" {
				t.Fatalf("confirmation after the restart: %q, want ok", s)
			}
			e.checkFile(t, `[3]`)
		})
	}
}
