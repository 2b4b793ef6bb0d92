package agent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testpki"
)

// tlsBroker starts mosquitto with one TLS listener (Ports[0]) serving server, and returns the
// agent's server URL for it.
func tlsBroker(t *testing.T, ca *testpki.CA, server testpki.Pair, extra ...string) (*mqtttest.Broker, string) {
	t.Helper()
	lines := append([]string{
		"cafile " + ca.CertFile,
		"certfile " + server.CertFile,
		"keyfile " + server.KeyFile,
		"allow_anonymous true",
	}, extra...)
	b := mqtttest.StartWith(t, mqtttest.Options{Listeners: []mqtttest.Listener{{Lines: lines}}})
	return b, fmt.Sprintf("tls://127.0.0.1:%d", b.Ports[0])
}

// refusedOnce waits until the agent has failed to connect at least three times and checks that
// exactly one warning said why, with want in its cause, and that status shows the same cause.
func refusedOnce(t *testing.T, h *harness, want string) {
	t.Helper()
	h.waitLog(`msg="cannot connect to broker" `, 2) // repeats are debug lines
	warn := h.logLines("cannot connect to broker; retrying with backoff")
	if len(warn) != 1 {
		t.Fatalf("%d warnings for one unchanged cause, want 1:\n%s", len(warn), strings.Join(warn, "\n"))
	}
	if !strings.Contains(warn[0], want) {
		t.Errorf("warning %q does not give the cause %q", warn[0], want)
	}
	st := h.agent.Connection()
	if st.Connected || !strings.Contains(st.LastError, want) || st.LastErrorAt.IsZero() {
		t.Errorf("Connection() = %+v, want not connected with cause %q", st, want)
	}
}

func TestTLS_ConnectsWithCAFileAndCheckedServerName(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	b, url := tlsBroker(t, ca, ca.Issue(t, "server", testpki.Loopback()))
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nca_file = %q", url, ca.CertFile))
	h.start()
	h.pulled("gw-001")
	h.pushAndConfirm("gw-001", "over-tls", `[{"tls":true}]`)
	if st := h.agent.Connection(); !st.Connected || st.Server != url || st.LastError != "" {
		t.Errorf("Connection() = %+v, want connected to %s", st, url)
	}
}

func TestTLS_ServerCertFromAnotherCAIsRefusedWithOneClearLogLine(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	other := testpki.NewCA(t, dir, "other-ca")
	b, url := tlsBroker(t, ca, ca.Issue(t, "server", testpki.Loopback()))
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nca_file = %q", url, other.CertFile))
	h.start()
	refusedOnce(t, h, "server certificate not trusted")
	h.all.None(t, 0) // nothing was ever published
}

func TestTLS_ServerCertForAnotherNameIsRefusedWithOneClearLogLine(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	b, url := tlsBroker(t, ca, ca.Issue(t, "server", testpki.Spec{CommonName: "broker.example", DNSNames: []string{"broker.example"}}))
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nca_file = %q", url, ca.CertFile))
	h.start()
	refusedOnce(t, h, "server certificate does not match the server name: x509: cannot validate certificate for 127.0.0.1")
}

// A plain MQTT listener reads the ClientHello as a malformed packet and closes the connection:
// the handshake ends in a bare reset or EOF, which alone would tell the operator nothing.
func TestTLS_PlainBrokerInATLSURLIsSaidToMaybeNotSpeakTLS(t *testing.T) {
	b := mqtttest.Start(t)
	url := strings.Replace(b.URL, "tcp://", "tls://", 1)
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]", url))
	h.start()
	refusedOnce(t, h, "closed the connection during the TLS handshake: it may not speak TLS")
}

func TestMutualTLS_ClientCertIsReloadedAtEachReconnect(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	b, url := tlsBroker(t, ca, ca.Issue(t, "server", testpki.Loopback()),
		"require_certificate true", "use_identity_as_username true")
	client := ca.Issue(t, "client", testpki.Spec{CommonName: "gw-001-first", Client: true})
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nca_file = %q\ncert_file = %q\nkey_file = %q\nclient_id = \"mtls-agent\"",
		url, ca.CertFile, client.CertFile, client.KeyFile))
	h.start()
	h.pulled("gw-001")
	b.WaitLog(t, "as mtls-agent (p2, c0, k30, u'gw-001-first')", 1, waitFor)
	h.pushAndConfirm("gw-001", "before-rotation", `[1]`)

	// Rotation: new certificate and key under the same names, then the connection drops.
	ca.Issue(t, "client", testpki.Spec{CommonName: "gw-001-rotated", Client: true})
	b.Restart(t)
	h.pulled("gw-001")
	b.WaitLog(t, "as mtls-agent (p2, c0, k30, u'gw-001-rotated')", 1, waitFor)
	h.pushAndConfirm("gw-001", "after-rotation", `[2]`)
}

func TestMutualTLS_ClientCertFromAnotherCAIsRefusedWithOneClearLogLine(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	rogue := testpki.NewCA(t, t.TempDir(), "rogue")
	b, url := tlsBroker(t, ca, ca.Issue(t, "server", testpki.Loopback()), "require_certificate true")
	client := rogue.Issue(t, "client", testpki.Spec{CommonName: "gw-001", Client: true})
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nca_file = %q\ncert_file = %q\nkey_file = %q",
		url, ca.CertFile, client.CertFile, client.KeyFile))
	h.start()
	refusedOnce(t, h, "the broker refused the TLS handshake")
}

func TestMutualTLS_UnreadableKeyIsRetriedAndPickedUpOnceFixed(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	b, url := tlsBroker(t, ca, ca.Issue(t, "server", testpki.Loopback()), "require_certificate true")
	client := ca.Issue(t, "client", testpki.Spec{CommonName: "gw-001", Client: true})
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nca_file = %q\ncert_file = %q\nkey_file = %q",
		url, ca.CertFile, client.CertFile, client.KeyFile))
	good, err := os.ReadFile(client.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(client.KeyFile, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.start()
	refusedOnce(t, h, "key_file")
	if err := os.WriteFile(client.KeyFile, good, 0o600); err != nil {
		t.Fatal(err)
	}
	h.pulled("gw-001") // the next attempt reads the fixed key: no restart needed
}

// passwordBroker starts mosquitto with a password listener (Ports[0]) knowing user/password.
func passwordBroker(t *testing.T, user, password string) (*mqtttest.Broker, string) {
	t.Helper()
	pwfile := filepath.Join(t.TempDir(), "passwd")
	out, err := exec.Command("mosquitto_passwd", "-b", "-c", pwfile, user, password).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_passwd: %v: %s", err, out)
	}
	b := mqtttest.StartWith(t, mqtttest.Options{Listeners: []mqtttest.Listener{{Lines: []string{"password_file " + pwfile}}}})
	return b, fmt.Sprintf("tcp://127.0.0.1:%d", b.Ports[0])
}

func writeSecret(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
	return p
}

const testPassword = "s3cret-Pa55-do-not-log"

func TestPassword_TrailingNewlineIsNotPartOfIt(t *testing.T) {
	b, url := passwordBroker(t, "gw-001", testPassword)
	pw := writeSecret(t, testPassword+"\n", 0o600)
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nusername = \"gw-001\"\npassword_file = %q", url, pw))
	h.start()
	h.pulled("gw-001")
	h.pushAndConfirm("gw-001", "authenticated", `["ok"]`)
	if strings.Contains(h.logs.String(), testPassword) {
		t.Errorf("the password appears in the log")
	}
}

func TestPassword_WrongOneIsNotAuthorisedOnceAndNeverLogged(t *testing.T) {
	b, url := passwordBroker(t, "gw-001", testPassword)
	wrong := "wrong-" + testPassword
	pw := writeSecret(t, wrong+"\r\n", 0o640)
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nusername = \"gw-001\"\npassword_file = %q", url, pw))
	h.start()
	refusedOnce(t, h, "not authorised: the broker refused the username or password")
	if logs := h.logs.String(); strings.Contains(logs, testPassword) {
		t.Errorf("a password appears in the log:\n%s", logs)
	}
	if st := h.agent.Connection(); strings.Contains(fmt.Sprint(st), testPassword) {
		t.Errorf("a password appears in the connection status: %+v", st)
	}

	// Fixing the file is enough: it is read again at the next attempt.
	if err := os.WriteFile(pw, []byte(testPassword+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	h.pulled("gw-001")
}

func TestPassword_WorldReadableFileIsRefused(t *testing.T) {
	b, url := passwordBroker(t, "gw-001", testPassword)
	pw := writeSecret(t, testPassword, 0o644)
	h := newHarnessOn(t, b, fmt.Sprintf("servers = [%q]\nusername = \"gw-001\"", url))
	h.cfg.Broker.PasswordFile = pw // `check` refuses it already; the agent must not rely on that
	h.start()
	refusedOnce(t, h, "password_file "+pw+" is readable by every user (mode 0644); refusing to use it")
	if n := b.Connects(h.clientID()); n != 0 {
		t.Errorf("broker saw %d connections, want none: the refused password must not be sent", n)
	}
	if err := os.Chmod(pw, 0o600); err != nil {
		t.Fatal(err)
	}
	h.pulled("gw-001")
}
