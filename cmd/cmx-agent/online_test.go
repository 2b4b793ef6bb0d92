package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testpki"
)

// onlineConfig writes a configuration of two endpoints at server, with a validate program, and
// returns its path.
func onlineConfig(t *testing.T, server, extra string) string {
	t.Helper()
	dir := t.TempDir()
	writeOrFail(t, filepath.Join(dir, "ok.sh"), "#!/bin/sh\nexit 0\n")
	if err := os.Chmod(filepath.Join(dir, "ok.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "agent.toml")
	writeOrFail(t, path, fmt.Sprintf(`[broker]
servers = [%q]
[kaa]
app_version = "app-v1"
[agent]
state_dir = "state"
socket = "state/agent.sock"
[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
validate = ["./ok.sh"]
[[endpoint]]
token = "gw-002"
output = "out/deeper/gw-002.json"
group = "0"
%s`, server, extra))
	return path
}

func runCheckOnline(t *testing.T, path string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run([]string{"check", "--online", "--config", path}, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func wantLines(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !regexp.MustCompile(`(?m)^` + w).MatchString(out) {
			t.Errorf("no line matching %q in:\n%s", w, out)
		}
	}
}

func TestCheckOnline_AllPassOnAWorkingGateway(t *testing.T) {
	b := mqtttest.Start(t)
	path := onlineConfig(t, b.URL, "")
	code, out, stderr := runCheckOnline(t, path)
	if code != 0 {
		t.Errorf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	wantLines(t, out,
		regexp.QuoteMeta(path+": ok (2 endpoints, dialect cmx3)"),
		regexp.QuoteMeta("ok broker "+b.URL+": connected"),
		regexp.QuoteMeta("ok subscribe kp1/app-v1/cmx/gw-001/json (endpoint gw-001): granted QoS 1"),
		regexp.QuoteMeta("ok subscribe kp1/app-v1/cmx/gw-002/json/+ (endpoint gw-002): granted QoS 1"),
		`ok output folder .*/out \(endpoint gw-001\): writable`,
		`ok output folder .*/out/deeper \(endpoint gw-002\): writable`,
		`ok group 0 \(endpoint gw-002\)`,
		`ok validate .*/ok.sh \(endpoint gw-001\): executable`,
	)
	if strings.Contains(out, "FAIL") {
		t.Errorf("a check failed:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(path), "out")); !os.IsNotExist(err) {
		t.Errorf("the check left the output folder behind (%v): it must change nothing", err)
	}
}

func TestCheckOnline_AnUnreachableBrokerFails(t *testing.T) {
	url := fmt.Sprintf("tcp://127.0.0.1:%d", mqtttest.FreePort(t))
	code, out, _ := runCheckOnline(t, onlineConfig(t, url, ""))
	if code != 1 {
		t.Errorf("exit %d, want 1\n%s", code, out)
	}
	wantLines(t, out,
		regexp.QuoteMeta("FAIL broker "+url+": connection refused: no broker listening")+`.*: .*broker\.servers`,
		`FAIL subscribe: not checked: no broker accepted the connection`,
		`ok output folder`,
	)
}

// mochiWithACL is a broker whose ACL refuses reading anything under deny: it answers such a
// SUBSCRIBE with 0x80, as RabbitMQ, EMQX and HiveMQ do (mosquitto 2.0 grants it and delivers
// nothing).
func mochiWithACL(t *testing.T, deny string) string {
	t.Helper()
	srv := mochi.New(&mochi.Options{InlineClient: false, Logger: slog.New(slog.DiscardHandler)})
	err := srv.AddHook(new(auth.Hook), &auth.Options{Ledger: &auth.Ledger{
		Auth: auth.AuthRules{{Allow: true}},
		ACL:  auth.ACLRules{{Filters: auth.Filters{auth.RString(deny): auth.Deny}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	tcp := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "acl", Address: "127.0.0.1:0"})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return "tcp://" + tcp.Address()
}

func TestCheckOnline_ARefusedSubscriptionSaysTheACLs(t *testing.T) {
	url := mochiWithACL(t, "kp1/app-v1/cmx/gw-002/#")
	code, out, _ := runCheckOnline(t, onlineConfig(t, url, ""))
	if code != 1 {
		t.Errorf("exit %d, want 1\n%s", code, out)
	}
	wantLines(t, out,
		regexp.QuoteMeta("ok broker "+url+": connected"),
		regexp.QuoteMeta("ok subscribe kp1/app-v1/cmx/gw-001/json (endpoint gw-001): granted QoS 1"),
		regexp.QuoteMeta("FAIL subscribe kp1/app-v1/cmx/gw-002/json (endpoint gw-002): refused by the broker (SUBACK 0x80): its ACLs do not let this client read the topic"),
	)
}

func TestCheckOnline_AnOutputFolderThatCannotBeMadeFails(t *testing.T) {
	b := mqtttest.Start(t)
	path := onlineConfig(t, b.URL, "")
	// The output's folder would have to be made where a file is.
	writeOrFail(t, filepath.Join(filepath.Dir(path), "out"), "a file\n")
	code, out, _ := runCheckOnline(t, path)
	if code != 1 {
		t.Errorf("exit %d, want 1\n%s", code, out)
	}
	wantLines(t, out, `FAIL output folder .*/out \(endpoint gw-001\): .*/out is not a folder \(mode -rw-`)
}

func TestCheckOnline_AnInvalidFileIsExit2WithoutConnecting(t *testing.T) {
	url := fmt.Sprintf("tcp://127.0.0.1:%d", mqtttest.FreePort(t))
	code, out, stderr := runCheckOnline(t, onlineConfig(t, url, "colour = \"blue\"\n"))
	if code != 2 || strings.Contains(out, "broker") || !strings.Contains(stderr, "unknown key endpoint.colour") {
		t.Errorf("exit %d, stdout %q, stderr %q; want 2, the problem and no broker line", code, out, stderr)
	}
}

// Over TLS with a password: the certificate is checked against ca_file and the server's name, and
// the broker's answer to the credentials is the line's.
func TestCheckOnline_TLSAndCredentials(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	passwd := filepath.Join(dir, "passwd")
	if out, err := exec.Command("mosquitto_passwd", "-c", "-b", passwd, "gw", "right").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v: %s", err, out)
	}
	for _, tc := range []struct {
		name, certName, password, want string
	}{
		{"all good", "", "right", regexp.QuoteMeta("ok broker tls://127.0.0.1:") + `\d+: connected, TLS certificate verified for 127\.0\.0\.1, credentials of gw accepted`},
		{"certificate for another name", "other.example", "right", regexp.QuoteMeta("FAIL broker tls://127.0.0.1:") + `\d+: server certificate does not match the server name`},
		{"wrong password", "", "wrong", regexp.QuoteMeta("FAIL broker tls://127.0.0.1:") + `\d+: not authorised: the broker refused the username or password`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := testpki.Loopback()
			if tc.certName != "" {
				spec = testpki.Spec{CommonName: tc.certName, DNSNames: []string{tc.certName}}
			}
			server := ca.Issue(t, "server-"+strings.ReplaceAll(tc.name, " ", "-"), spec)
			b := mqtttest.StartWith(t, mqtttest.Options{Listeners: []mqtttest.Listener{{Lines: []string{
				"cafile " + ca.CertFile, "certfile " + server.CertFile, "keyfile " + server.KeyFile, "password_file " + passwd,
			}}}})
			pw := filepath.Join(t.TempDir(), "pw")
			if err := os.WriteFile(pw, []byte(tc.password+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			url := fmt.Sprintf("tls://127.0.0.1:%d", b.Ports[0])
			path := onlineConfig(t, url, "")
			cfg := strings.Replace(readOrEmpty(path), "[kaa]", fmt.Sprintf("ca_file = %q\nusername = \"gw\"\npassword_file = %q\n[kaa]", ca.CertFile, pw), 1)
			writeOrFail(t, path, cfg)
			code, out, _ := runCheckOnline(t, path)
			wantLines(t, out, tc.want)
			if ok := !strings.Contains(out, "FAIL"); ok != (code == 0) {
				t.Errorf("exit %d with these lines:\n%s", code, out)
			}
		})
	}
}
