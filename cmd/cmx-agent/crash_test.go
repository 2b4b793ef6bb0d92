package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// The crash tests run the real binary, stop it at each durable step with the test pause, kill it with
// SIGKILL there, start it again and check that the file is right and the push was confirmed.

const crashApp = "crash-v1"

var buildOnce struct {
	sync.Once
	path string
	err  error
}

// binary builds cmx-agent once per test process.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cmx-agent-bin-")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.path = filepath.Join(dir, "cmx-agent")
		out, err := exec.Command("go", "build", "-race", "-o", buildOnce.path, ".").CombinedOutput()
		if err != nil {
			buildOnce.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildOnce.path != "" {
		os.RemoveAll(filepath.Dir(buildOnce.path))
	}
	os.Exit(code)
}

// proc is a running cmx-agent process whose stderr is kept and scanned.
type proc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	added chan struct{}
	done  chan struct{}
}

func startAgent(t *testing.T, config string, env ...string) *proc {
	t.Helper()
	return startAgentIn(t, "", config, env...)
}

// startAgentIn is startAgent with the working directory dir ("" = the test's).
func startAgentIn(t *testing.T, dir, config string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary(t), "run", "--config", config, "--log-level", "debug")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, added: make(chan struct{}, 1), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.added <- struct{}{}:
			default:
			}
		}
		io.Copy(io.Discard, stderr)
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("agent stderr:\n%s", p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// waitLine waits until a line of stderr contains s.
func (p *proc) waitLine(t *testing.T, s string) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		if strings.Contains(p.output(), s) {
			return
		}
		select {
		case <-p.added:
		case <-p.done:
			if strings.Contains(p.output(), s) {
				return
			}
			t.Fatalf("agent exited before logging %q", s)
		case <-deadline.C:
			t.Fatalf("agent did not log %q within 20s", s)
		}
	}
}

func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

type crashEnv struct {
	broker *mqtttest.Broker
	server *mqtttest.Client
	all    *mqtttest.Sub
	dir    string
	config string
	output string
	prefix string
}

func newCrashEnv(t *testing.T) *crashEnv {
	t.Helper()
	return newCrashEnvWith(t, "", `[[endpoint]]
token = "gw-001"
output = "out/gw-001.json"
`, "gw-001.json")
}

// newCrashEnvWith writes an agent config with extra [kaa] lines and the given endpoints (all of
// token gw-001) and starts the broker and the watching server; output is the file under out/.
func newCrashEnvWith(t *testing.T, kaa, endpoints, output string) *crashEnv {
	t.Helper()
	b := mqtttest.Start(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.toml")
	err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[broker]
servers = [%q]
client_id = "crash-agent"
reconnect_spread = "0s"
[kaa]
app_version = %q
%s[agent]
state_dir = "state"
socket = "state/agent.sock"
%s`, b.URL, crashApp, kaa, endpoints)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	e := &crashEnv{broker: b, dir: dir, config: cfg, output: filepath.Join(dir, "out", output),
		prefix: "kp1/" + crashApp + "/cmx/gw-001"}
	e.server = b.Client(t)
	e.all = e.server.Subscribe(t, "kp1/#", 2)
	return e
}

func (e *crashEnv) waitPull(t *testing.T) {
	t.Helper()
	e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return m.Topic == e.prefix+"/pull/json" })
}

func (e *crashEnv) waitConfirmation(t *testing.T, id string) string {
	t.Helper()
	m := e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool {
		if m.Topic != e.prefix+"/json/status" {
			return false
		}
		var c struct {
			ID json.RawMessage `json:"id"`
		}
		return json.Unmarshal(m.Payload, &c) == nil && string(c.ID) == id
	})
	if m.QoS != 1 {
		t.Errorf("confirmation QoS = %d, want 1", m.QoS)
	}
	var c struct {
		Status string `json:"status"`
	}
	json.Unmarshal(m.Payload, &c)
	return c.Status
}

func (e *crashEnv) checkFile(t *testing.T, want string) {
	t.Helper()
	got, err := os.ReadFile(e.output)
	if err != nil || string(got) != want {
		t.Errorf("output = %q (%v), want %q", got, err, want)
	}
	entries, _ := os.ReadDir(filepath.Dir(e.output))
	for _, de := range entries {
		if de.Name() != filepath.Base(e.output) {
			t.Errorf("output folder holds %s besides the output", de.Name())
		}
	}
}

// Both paths of docs/durability.md: a plain endpoint takes the held path (the PUBACK waits for the
// one commit of the result), an endpoint with a hook the committed path (a receive commit first).
func TestCrash_AtEachStepLosesNothing(t *testing.T) {
	paths := []struct {
		name      string
		endpoints string
	}{
		{"held", "[[endpoint]]\ntoken = \"gw-001\"\noutput = \"out/gw-001.json\"\n"},
		{"committed", "[[endpoint]]\ntoken = \"gw-001\"\noutput = \"out/gw-001.json\"\nhook = [\"true\"]\n"},
	}
	steps := []struct {
		step string
		// confirmedBeforeKill: the broker already had the confirmation when the process died, so the
		// restarted agent sends it a second time (at least once).
		confirmedBeforeKill bool
	}{
		{agent.StepReceived, false},
		{agent.StepSynced, false},
		{agent.StepRenamed, false},
		{agent.StepCommitted, false},
		{agent.StepPublished, true},
	}
	for _, path := range paths {
		for _, tc := range steps {
			t.Run(path.name+"/"+tc.step, func(t *testing.T) {
				e := newCrashEnvWith(t, "", path.endpoints, "gw-001.json")
				p := startAgent(t, e.config, "CMX_AGENT_TEST_PAUSE="+tc.step)
				e.waitPull(t)
				e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":"c1","entries":[{"v":1}]}`))
				p.waitLine(t, "test pause at "+tc.step)
				if tc.confirmedBeforeKill {
					if s := e.waitConfirmation(t, `"c1"`); s != "ok" {
						t.Errorf("status before kill = %q", s)
					}
				}
				p.kill(t)

				p = startAgent(t, e.config)
				if s := e.waitConfirmation(t, `"c1"`); s != "ok" {
					t.Errorf("status after restart = %q, want ok", s)
				}
				e.checkFile(t, `[{"v":1}]`)
				p.waitLine(t, "answer delivered")
			})
		}
	}
}

func TestCrash_WithNewerPushWaitingAppliesBothInOrder(t *testing.T) {
	e := newCrashEnv(t)
	p := startAgent(t, e.config, "CMX_AGENT_TEST_PAUSE="+agent.StepSynced)
	e.waitPull(t)
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":1,"entries":["one"]}`))
	p.waitLine(t, "test pause at synced")
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":2,"entries":["two"]}`))
	p.waitLine(t, `msg="configuration received" endpoint=gw-001 id=2 `)
	p.kill(t)

	startAgent(t, e.config)
	got := map[string]string{}
	for range 2 {
		m := e.all.NextMatching(t, 20*time.Second, func(m mqtttest.Message) bool { return m.Topic == e.prefix+"/json/status" })
		var c struct {
			ID     json.RawMessage `json:"id"`
			Status string          `json:"status"`
		}
		json.Unmarshal(m.Payload, &c)
		got[string(c.ID)] = c.Status
	}
	if got["1"] != "ok" || got["2"] != "ok" {
		t.Errorf("confirmations = %v, want 1 and 2 ok", got)
	}
	testkit.WaitFile(t, e.output, []byte(`["two"]`), 10*time.Second) // the newer push
}

func TestRun_SIGTERMStopsWithinFiveSeconds(t *testing.T) {
	e := newCrashEnv(t)
	p := startAgent(t, e.config)
	e.waitPull(t)
	p.terminate(t)
}

// terminate sends SIGTERM and checks that the agent exits 0 within five seconds.
func (p *proc) terminate(t *testing.T) {
	t.Helper()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("still running 5s after SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code = %d, want 0", code)
	}
	t.Logf("stopped in %v", time.Since(start))
}

func TestCrash_DuringTheHookRunsItAgainAfterRestart(t *testing.T) {
	e := newCrashEnv(t)
	hook := filepath.Join(e.dir, "hook.sh")
	block := filepath.Join(e.dir, "block")
	os.WriteFile(hook, []byte(`#!/bin/sh
echo "$CMX_CONFIG_ID $(cat "$CMX_OUTPUT")" >> "$(dirname "$0")/hook.log"
if [ -e "$(dirname "$0")/block" ]; then echo $$ > "$(dirname "$0")/hook.pid"; exec sleep 60; fi
`), 0o755)
	os.WriteFile(block, nil, 0o644)
	cfg, _ := os.ReadFile(e.config)
	os.WriteFile(e.config, append(cfg, []byte("hook = [\""+hook+"\"]\n")...), 0o644)
	p := startAgent(t, e.config)
	e.waitPull(t)
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":"h1","entries":[1]}`))
	pidFile := filepath.Join(e.dir, "hook.pid")
	var pidText []byte
	testkit.Eventually(t, 20*time.Second, func() bool {
		pidText, _ = os.ReadFile(pidFile)
		return len(pidText) > 0
	}, "hook did not start")
	var pid int
	fmt.Sscan(string(pidText), &pid)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	p.kill(t) // in the middle of the hook
	os.Remove(block)

	startAgent(t, e.config)
	if s := e.waitConfirmation(t, `"h1"`); s != "ok" {
		t.Errorf("status after restart = %q", s)
	}
	e.checkFile(t, `[1]`)
	b, _ := os.ReadFile(filepath.Join(e.dir, "hook.log"))
	if got := string(b); got != "h1 [1]\nh1 [1]\n" {
		t.Errorf("hook runs %q, want two for h1 (the crashed one and the redo)", got)
	}
}
