package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/internal/testpki"
)

// mutualTLSBroker starts mosquitto with a plain listener (b.URL, for the agent and the test's
// client) and a TLS listener that requires a client certificate from ca; it returns the TLS URL.
func mutualTLSBroker(t *testing.T, ca *testpki.CA) (*mqtttest.Broker, string) {
	t.Helper()
	server := ca.Issue(t, "server", testpki.Loopback())
	b := mqtttest.StartWith(t, mqtttest.Options{Listeners: []mqtttest.Listener{{Lines: []string{
		"cafile " + ca.CertFile, "certfile " + server.CertFile, "keyfile " + server.KeyFile,
		"require_certificate true", "allow_anonymous true",
	}}}})
	return b, fmt.Sprintf("tls://127.0.0.1:%d", b.Ports[0])
}

func TestPush_ReachesAMutualTLSBrokerWithAPrivateCA(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	b, url := mutualTLSBroker(t, ca)
	client := ca.Issue(t, "cmxctl", testpki.Spec{CommonName: "cmxctl", Client: true})
	out := runningAgent(t, b)
	push := []string{"push", "--broker", url, "--app", app, "--token", "gw-001", "--wait", "10s"}
	withTLS := append(push[:len(push):len(push)], "--ca-file", ca.CertFile, "--cert-file", client.CertFile, "--key-file", client.KeyFile)

	stdout, stderr, code := cmxctl(t, append(withTLS, "--id", "7", writeFile(t, `[{"over":"tls"}]`))...)
	if code != 0 || stdout != "confirmation gw-001 id=7 status=\"ok\"\n" {
		t.Fatalf("push over mutual TLS: exit %d, stdout %q, stderr %q; want 0 and the ok confirmation", code, stdout, stderr)
	}
	if got, err := os.ReadFile(out); err != nil || string(got) != `[{"over":"tls"}]` {
		t.Errorf("output = %q (%v), want the pushed body", got, err)
	}

	// Without the private CA the broker's certificate is not trusted; without a client certificate
	// the broker refuses the handshake. Both are runtime failures: exit 1.
	for _, c := range []struct {
		name string
		args []string
		says string
	}{
		{"no --ca-file", append(push[:len(push):len(push)], "--cert-file", client.CertFile, "--key-file", client.KeyFile), "certificate signed by unknown authority"},
		{"no client certificate", append(push[:len(push):len(push)], "--ca-file", ca.CertFile), "tls"},
	} {
		_, stderr, code := cmxctl(t, append(c.args, "--id", "8", writeFile(t, `[{"over":"nothing"}]`))...)
		if code != 1 || !strings.Contains(stderr, c.says) {
			t.Errorf("%s: exit %d, stderr %q; want 1 and %q", c.name, code, stderr, c.says)
		}
	}
	if got, _ := os.ReadFile(out); string(got) != `[{"over":"tls"}]` {
		t.Errorf("output = %q after refused pushes, want unchanged", got)
	}
}

func TestServe_AnswersOverAMutualTLSBrokerWithAPrivateCA(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	b, url := mutualTLSBroker(t, ca)
	client := ca.Issue(t, "cmxctl", testpki.Spec{CommonName: "cmxctl", Client: true})
	configs := filepath.Join(dir, "configs")
	if err := os.MkdirAll(configs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(configs, "gw-001.json"), []byte(`[{"served":"tls"}]`), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr testkit.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--broker", url, "--app", app, "--configs", configs,
			"--ca-file", ca.CertFile, "--cert-file", client.CertFile, "--key-file", client.KeyFile}, &stdout, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exited %d after its context ended, want 0; stderr:\n%s", code, stderr.String())
		}
	})
	stderr.Wait(t, "serving configurations", 10*time.Second)

	out := runningAgent(t, b)
	testkit.WaitFile(t, out, []byte(`[{"served":"tls"}]`), 10*time.Second)
	testkit.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(stdout.String(), `gw-001`) && strings.Contains(stdout.String(), `status="ok"`)
	}, "no confirmation printed: %s", stdout.String)
}

// Input that cannot be used exits 2 with one plain line naming the file and what is wrong with it,
// before anything is sent (the broker here is a closed port: trying it would exit 1).
func TestPushAndServe_InputErrorsExit2WithAPlainMessage(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	client := ca.Issue(t, "client", testpki.Spec{CommonName: "c", Client: true})
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notJSON := file("p.json", "[\n  {\"a\": 1},\n  {\"b\": }\n]\n")
	object := file("object.json", `{"a": 1}`)
	garbage := file("garbage.pem", "not a certificate\n")
	const closed = "tls://127.0.0.1:1"
	push := []string{"push", "--broker", closed, "--app", app, "--token", "gw-001"}
	serve := []string{"serve", "--broker", closed, "--app", app, "--configs", dir}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"body not JSON", append(push, notJSON), notJSON + " is not JSON: line 3, column 9: invalid character '}' looking for beginning of value"},
		{"body cut short", append(push, file("cut.json", "[1,\n2")), "cut.json is not JSON: line 2, column 2: unexpected end of JSON input"},
		{"cmx3 body not an array", append(push, object), object + " is not a JSON array (3/CMX entries are one)"},
		{"cmp7 body not JSON", append(push, "--dialect", "cmp7", "--id", "c-1", notJSON), notJSON + " is not JSON: line 3"},
		{"--ca-file not a certificate", append(push, "--ca-file", garbage, object), "--ca-file " + garbage + ": no PEM certificate in it"},
		{"--ca-file missing", append(push, "--ca-file", filepath.Join(dir, "none.pem"), object), "--ca-file: open " + filepath.Join(dir, "none.pem") + ": no such file or directory"},
		{"--cert-file without --key-file", append(push, "--cert-file", client.CertFile, object), "--cert-file and --key-file go together"},
		{"--key-file not a key", append(push, "--cert-file", client.CertFile, "--key-file", garbage, object), "--cert-file " + client.CertFile + " / --key-file " + garbage + ": "},
		{"TLS files with a plain URL", append([]string{"push", "--broker", "tcp://127.0.0.1:1", "--app", app, "--token", "gw-001", "--ca-file", ca.CertFile}, object),
			"--ca-file needs a tls://, ssl://, mqtts:// or wss:// --broker URL: tcp://127.0.0.1:1 stays plain"},
		{"token not a topic level", []string{"push", "--broker", closed, "--app", app, "--token", "a/b", object}, `"a/b" cannot be a topic level`},
		{"unknown dialect", append(push, "--dialect", "cmx9", object), `unknown dialect "cmx9" (cmx3 or cmp7)`},
		{"serve: --ca-file not a certificate", append(serve, "--ca-file", garbage), "--ca-file " + garbage + ": no PEM certificate in it"},
		{"serve: configs not a folder", []string{"serve", "--broker", closed, "--app", app, "--configs", object}, object + " is not a folder"},
		{"serve: configs missing", []string{"serve", "--broker", closed, "--app", app, "--configs", filepath.Join(dir, "none")}, "configurations folder: stat " + filepath.Join(dir, "none") + ": no such file or directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr, code := cmxctl(t, c.args...)
			if code != 2 || !strings.Contains(stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr, c.want)
			}
			if strings.Count(stderr, "\n") != 1 || strings.Contains(stderr, "push: push") || strings.Contains(stderr, "serve: serve") || stdout != "" {
				t.Errorf("stdout %q, stderr %q; want one plain line on stderr", stdout, stderr)
			}
		})
	}
}
