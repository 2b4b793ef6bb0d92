package fieldtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// agentBinary builds ./cmd/cmx-agent once per test process, with the race detector, so the
// suites also watch the agent itself for data races.
var agentBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "fieldtest-bin-")
	if err != nil {
		return "", fmt.Errorf("build cmx-agent: %w", err)
	}
	path := filepath.Join(dir, "cmx-agent")
	out, err := exec.Command("go", "build", "-race", "-o", path, "github.com/cmx-agent/cmx-agent/cmd/cmx-agent").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build cmx-agent: %w\n%s", err, out)
	}
	return path, nil
})

func TestMain(m *testing.M) {
	code := m.Run()
	if path, err := agentBinary(); err == nil {
		os.RemoveAll(filepath.Dir(path))
	}
	os.Exit(code)
}

// gatewaySpec is what a gateway's agent.toml says.
type gatewaySpec struct {
	servers   []string // broker URLs, in failover order
	clientID  string
	app       string
	tokens    []string // one endpoint each, written to out/<token>.json
	keepalive string   // default 5s
	username  string   // with password: the broker user, the password in a password_file
	password  string
	extra     string // more TOML for [agent], e.g. max_payload
}

// gateway is one cmx-agent process with its configuration, state and outputs in a folder of its
// own. It survives stop and start: the same state and session come back.
type gateway struct {
	t      *testing.T // the test or subtest using it now (see in)
	spec   gatewaySpec
	dir    string
	config string
	socket string
	log    string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func newGateway(t *testing.T, spec gatewaySpec) *gateway {
	t.Helper()
	if spec.keepalive == "" {
		spec.keepalive = "5s"
	}
	dir := t.TempDir()
	// A unix socket path is limited to 108 bytes, which a test's temp folder can exceed.
	sockDir, err := os.MkdirTemp("", "cmxgw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	g := &gateway{
		t: t, spec: spec, dir: dir,
		config: filepath.Join(dir, "agent.toml"),
		socket: filepath.Join(sockDir, "agent.sock"),
		log:    filepath.Join(dir, "agent.log"),
	}
	var b strings.Builder
	quoted := make([]string, len(spec.servers))
	for i, s := range spec.servers {
		quoted[i] = strconv.Quote(s)
	}
	// reconnect_spread = 0s: the suites measure how fast one agent finds the broker again; the
	// default spreads a fleet's first reconnect over 30 s (docs/brokers.md).
	fmt.Fprintf(&b, "[broker]\nservers = [%s]\nclient_id = %q\nkeepalive = %q\nreconnect_spread = \"0s\"\n",
		strings.Join(quoted, ", "), spec.clientID, spec.keepalive)
	if spec.username != "" {
		pw := filepath.Join(dir, "password")
		if err := os.WriteFile(pw, []byte(spec.password), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "username = %q\npassword_file = %q\n", spec.username, pw)
	}
	fmt.Fprintf(&b, "[kaa]\napp_version = %q\n", spec.app)
	fmt.Fprintf(&b, "[agent]\nstate_dir = \"state\"\nsocket = %q\n%s\n", g.socket, spec.extra)
	for _, tok := range spec.tokens {
		fmt.Fprintf(&b, "[[endpoint]]\ntoken = %q\noutput = %q\n", tok, "out/"+tok+".json")
	}
	if err := os.WriteFile(g.config, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		g.kill()
		if t.Failed() {
			t.Logf("agent log (%s), last lines:\n%s", g.log, tail(g.log, 60))
		}
	})
	return g
}

// in is cloud.in for the gateway.
func (g *gateway) in(t *testing.T) (restore func()) {
	prev := g.t
	g.t = t
	return func() { g.t = prev }
}

// start runs the agent; its stderr is appended to agent.log across runs.
func (g *gateway) start() {
	g.t.Helper()
	bin, err := agentBinary()
	if err != nil {
		g.t.Fatal(err)
	}
	logf, err := os.OpenFile(g.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		g.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "run", "--config", g.config, "--log-level", "debug")
	cmd.Stderr = logf
	cmd.Stdout = logf
	if err := cmd.Start(); err != nil {
		g.t.Fatalf("start cmx-agent: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	g.mu.Lock()
	g.cmd, g.done = cmd, done
	g.mu.Unlock()
}

// stop sends SIGTERM and waits for the agent to exit (the contract: within 5 s).
func (g *gateway) stop() {
	g.t.Helper()
	g.mu.Lock()
	cmd, done := g.cmd, g.done
	g.cmd = nil
	g.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		g.t.Fatalf("cmx-agent did not exit within 15s of SIGTERM")
	}
}

func (g *gateway) kill() {
	g.mu.Lock()
	cmd, done := g.cmd, g.done
	g.cmd = nil
	g.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Kill()
		<-done
	}
}

func (g *gateway) output(token string) string { return filepath.Join(g.dir, "out", token+".json") }

// agentStatus is the part of GET /v1/status the suites read.
type agentStatus struct {
	Connected bool   `json:"connected"`
	Server    string `json:"server"`
	LastError string `json:"last_error"`
	Degraded  string `json:"degraded"`
	Endpoints []struct {
		Token     string `json:"token"`
		AppliedID string `json:"applied_id"`
		Pending   int    `json:"pending"`
		Waiting   bool   `json:"waiting"`
	} `json:"endpoints"`
}

// status asks the running agent over its local API.
func (g *gateway) status() (agentStatus, error) {
	c := http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", g.socket)
		}},
	}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://agent/v1/status")
	if err != nil {
		return agentStatus{}, fmt.Errorf("agent status: %w", err)
	}
	defer resp.Body.Close()
	var st agentStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return agentStatus{}, fmt.Errorf("agent status: %w", err)
	}
	return st, nil
}

// waitConnected waits until the agent's status says it is connected to server ("" = any).
func (g *gateway) waitConnected(server string, within time.Duration) agentStatus {
	g.t.Helper()
	var st agentStatus
	var err error
	eventually(g.t, within, func() (bool, string) {
		st, err = g.status()
		if err != nil {
			return false, err.Error()
		}
		return st.Connected && (server == "" || st.Server == server), fmt.Sprintf("status %+v, want connected to %q", st, server)
	})
	return st
}

// eventually polls cond until it holds, and fails the test with cond's last description when it
// does not within the deadline. It is how the suites wait for outcomes that show only in files or
// in the agent's status.
func eventually(t *testing.T, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	// From 10 ms up to 200 ms: quick for what is quick, and light on a small machine for the
	// checks that read a thousand files.
	for pause := 10 * time.Millisecond; ; pause = min(2*pause, 200*time.Millisecond) {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, why)
		}
		time.Sleep(pause)
	}
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
