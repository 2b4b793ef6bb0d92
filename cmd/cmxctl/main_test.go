package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

const app = "ctl-v1"

func cmxctl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e strings.Builder
	code = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), code
}

// runningAgent starts a real cmx3 agent for gw-001 and waits until it has subscribed (its pull
// goes out after the SUBACK); it returns the output file.
func runningAgent(t *testing.T, b *mqtttest.Broker) string {
	t.Helper()
	dir := startAgent(t, b, `[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
`, "", "kp1/"+app+"/cmx/gw-001/pull/json")
	return filepath.Join(dir, "out", "gw-001.json")
}

// startAgent runs an in-process agent on broker b with the given endpoints and dialect ("" for
// cmx3) until the test ends, and returns once a message arrives at readyTopic (a request the agent
// sends after its subscriptions are acknowledged). It returns the agent's folder.
func startAgent(t *testing.T, b *mqtttest.Broker, endpoints, dialect, readyTopic string) string {
	t.Helper()
	dir := t.TempDir()
	kaa := fmt.Sprintf("app_version = %q\n", app)
	if dialect != "" {
		kaa += fmt.Sprintf("dialect = %q\n", dialect)
	}
	cfg, err := config.Parse(filepath.Join(dir, "agent.toml"), fmt.Appendf(nil,
		"[broker]\nservers = [%q]\n[kaa]\n%s[agent]\nstate_dir = \"state\"\nsocket = \"state/agent.sock\"\n%s",
		b.URL, kaa, endpoints))
	if err != nil {
		t.Fatal(err)
	}
	ready := b.Client(t).Subscribe(t, readyTopic, 1)
	a, err := agent.New(cfg, agent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		a.Close()
	})
	ready.Next(t, 10*time.Second)
	return dir
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cfg.json")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPush_WaitExitsZeroOnlyOnOK(t *testing.T) {
	b := mqtttest.Start(t)
	out := runningAgent(t, b)
	common := []string{"push", "--broker", b.URL, "--app", app, "--token", "gw-001", "--wait", "10s"}

	stdout, stderr, code := cmxctl(t, append(common, "--id", "7", writeFile(t, `[{"k":"v"}]`))...)
	if code != 0 || stdout != "confirmation gw-001 id=7 status=\"ok\"\n" {
		t.Fatalf("push: exit %d, stdout %q, stderr %q; want 0 and the ok confirmation", code, stdout, stderr)
	}
	if got, err := os.ReadFile(out); err != nil || string(got) != `[{"k":"v"}]` {
		t.Errorf("output = %q (%v) right after the confirmation, want the pushed body", got, err)
	}

	// Same id again: confirmed with the stored status, exit 0, nothing applied again.
	stdout, _, code = cmxctl(t, append(common, "--id", "7", writeFile(t, `[{"k":"other"}]`))...)
	if code != 0 || !strings.Contains(stdout, `status="ok"`) {
		t.Errorf("duplicate id: exit %d, stdout %q", code, stdout)
	}
	if got, _ := os.ReadFile(out); string(got) != `[{"k":"v"}]` {
		t.Errorf("output after a duplicate id = %q, want unchanged", got)
	}

	stdout, _, code = cmxctl(t, append(common, "--raw", "--id", "8", writeFile(t, `{"id":8,"entries":"x"}`))...)
	if code != 1 || !strings.Contains(stdout, "invalid payload") {
		t.Errorf("refused push: exit %d, stdout %q; want 1 and the error status", code, stdout)
	}
}

func TestPush_NoConfirmationExits1(t *testing.T) {
	b := mqtttest.Start(t)
	_, stderr, code := cmxctl(t, "push", "--broker", b.URL, "--app", app, "--token", "nobody", "--wait", "100ms", writeFile(t, `[]`))
	if code != 1 || !strings.Contains(stderr, "no confirmation within 100ms") {
		t.Errorf("exit %d, stderr %q; want 1 and 'no confirmation'", code, stderr)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nope"},
		{"push", "file.json"},
		{"push", "--token", "t"},
		{"push", "--token", "t", "/does/not/exist.json"},
		{"serve"},
		{"serve", "--configs", "x", "extra"},
	} {
		if _, _, code := cmxctl(t, args...); code != 2 {
			t.Errorf("cmxctl %q: exit %d, want 2", args, code)
		}
	}
}

func TestServeHelp_SaysRabbitMQDoesNotSupportShare(t *testing.T) {
	_, stderr, _ := cmxctl(t)
	if !strings.Contains(stderr, "RabbitMQ does not support $share") {
		t.Errorf("usage does not warn about $share on RabbitMQ:\n%s", stderr)
	}
	stdout, _, _ := cmxctl(t, "serve", "-h")
	if !strings.Contains(stdout, "not on RabbitMQ: it does not support $share") {
		t.Errorf("serve -h does not warn about $share on RabbitMQ:\n%s", stdout)
	}
}

// Every command answers -h and --help with its usage on stdout and exit 0: what it does, its
// positional arguments, its flags written with two dashes.
func TestHelp_EveryCommandAnswersOnStdoutWithExit0(t *testing.T) {
	cases := []struct {
		sub   string
		wants []string
	}{
		{"push", []string{"usage: cmxctl push --token T", "FILE", "push FILE's configuration", "  --token string", "  --ca-file string", "  --wait duration"}},
		{"serve", []string{"usage: cmxctl serve --configs DIR", "answer requests", "  --configs string", "  --share string", "not on RabbitMQ"}},
		{"demo", []string{"usage: cmxctl demo [--addr HOST:PORT] [--exit]", "the whole loop", "  --addr string", "  --exit"}},
		{"version", []string{"usage: cmxctl version", "version, commit"}},
	}
	for _, c := range cases {
		for _, h := range []string{"-h", "--help"} {
			t.Run(c.sub+" "+h, func(t *testing.T) {
				stdout, stderr, code := cmxctl(t, c.sub, h)
				if code != 0 || stderr != "" {
					t.Errorf("exit %d, stderr %q; want 0 and nothing on stderr", code, stderr)
				}
				for _, want := range c.wants {
					if !strings.Contains(stdout, want) {
						t.Errorf("stdout lacks %q:\n%s", want, stdout)
					}
				}
				if regexp.MustCompile(`(?m)^\s+-[a-z]`).MatchString(stdout) {
					t.Errorf("a flag written with one dash:\n%s", stdout)
				}
			})
		}
	}
}

func TestHelp_AnUnknownFlagExits2WithOneLineAndWhereToLook(t *testing.T) {
	stdout, stderr, code := cmxctl(t, "push", "--nope")
	if code != 2 || stdout != "" || stderr != "cmxctl push: flag provided but not defined: -nope (cmxctl push --help lists the flags)\n" {
		t.Errorf("exit %d, stdout %q, stderr %q; want 2 and one line", code, stdout, stderr)
	}
}
