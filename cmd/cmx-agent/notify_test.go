package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// fakeSystemd is the service manager's end of the notify protocol: a unixgram socket whose path
// goes to the agent in NOTIFY_SOCKET. Every datagram is one notification.
type fakeSystemd struct {
	path string
	msgs chan string
}

func newFakeSystemd(t *testing.T) *fakeSystemd {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSystemd{path: path, msgs: make(chan string, 1024)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(f.msgs)
				return
			}
			f.msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return f
}

// next waits for the next notification that contains want, failing on a deadline; the ones before
// it are returned too so a test can check order.
func (f *fakeSystemd) next(t *testing.T, want string) (msg string, before []string) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case m, ok := <-f.msgs:
			if !ok {
				t.Fatalf("notify socket closed while waiting for %q", want)
			}
			if strings.Contains(m, want) {
				return m, before
			}
			before = append(before, m)
		case <-deadline.C:
			t.Fatalf("no notification with %q within 20s; got %q", want, before)
		}
	}
}

// none checks that no notification containing s arrives within d.
func (f *fakeSystemd) none(t *testing.T, s string, d time.Duration) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		select {
		case m := <-f.msgs:
			if strings.Contains(m, s) {
				t.Fatalf("unexpected notification %q", m)
			}
		case <-deadline.C:
			return
		}
	}
}

func TestNotify_ReadyWithoutBrokerThenStatusReloadAndStopping(t *testing.T) {
	e := newCrashEnv(t)
	e.broker.Stop(t)
	sd := newFakeSystemd(t)
	p := startAgent(t, e.config, "NOTIFY_SOCKET="+sd.path, "WATCHDOG_USEC=200000")

	ready, before := sd.next(t, "READY=1")
	if len(before) != 0 {
		t.Errorf("notifications before READY=1: %q", before)
	}
	if !strings.Contains(ready, "STATUS=not connected; nothing applied yet") {
		t.Errorf("READY message %q, want the status with it", ready)
	}
	// WatchdogSec=200ms: a ping every 100ms.
	for range 3 {
		sd.next(t, "WATCHDOG=1")
	}

	e.broker.Start(t)
	e.waitPull(t)
	sd.next(t, "STATUS=connected to "+e.broker.URL+"; nothing applied yet")
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":42,"entries":[1]}`))
	e.waitConfirmation(t, "42")
	sd.next(t, "STATUS=connected to "+e.broker.URL+"; applied 42")

	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	reloading, _ := sd.next(t, "RELOADING=1")
	if !strings.Contains(reloading, "MONOTONIC_USEC=") {
		t.Errorf("RELOADING message %q, want MONOTONIC_USEC too", reloading)
	}
	sd.next(t, "READY=1")

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sd.next(t, "STOPPING=1")
	<-p.done
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

func TestNotify_HungMainLoopStopsWatchdogPings(t *testing.T) {
	e := newCrashEnv(t)
	sd := newFakeSystemd(t)
	startAgent(t, e.config, "NOTIFY_SOCKET="+sd.path, "WATCHDOG_USEC=100000", pauseEnv+"="+stepWatchdog)
	sd.next(t, "READY=1")
	// The main loop blocks at its first watchdog tick, so systemd would see no ping and kill it.
	sd.none(t, "WATCHDOG=1", time.Second)
}

func TestNotify_NoWatchdogPingsWithoutWatchdogUsec(t *testing.T) {
	e := newCrashEnv(t)
	sd := newFakeSystemd(t)
	startAgent(t, e.config, "NOTIFY_SOCKET="+sd.path)
	sd.next(t, "READY=1")
	sd.none(t, "WATCHDOG=1", 500*time.Millisecond)
}

func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), 0
}

func TestStatusAndSync_TalkToTheRunningAgent(t *testing.T) {
	e := newCrashEnv(t)
	_, stderr, code := runCLI(t, "status", "--config", e.config)
	if code != 1 || !strings.Contains(stderr, "no agent answers on "+filepath.Join(e.dir, "state", "agent.sock")) {
		t.Fatalf("status with no agent: exit %d, stderr %q; want 1 and 'no agent answers'", code, stderr)
	}

	startAgent(t, e.config)
	e.waitPull(t)
	e.server.Publish(t, e.prefix+"/json", 1, []byte(`{"id":"v7","entries":[1]}`))
	e.waitConfirmation(t, `"v7"`)

	// The database stays locked by the agent; status answers all the same, from the socket.
	var st agent.Status
	testkit.Eventually(t, 20*time.Second, func() bool {
		out, stderr, code := runCLI(t, "status", "--json", "--config", e.config)
		if code != 0 {
			t.Fatalf("status --json: exit %d: %s", code, stderr)
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("status --json output %q: %v", out, err)
		}
		return len(st.Endpoints) == 1 && st.Endpoints[0].Pending == 0
	}, "status = %s, want one endpoint, nothing pending", func() string { return fmt.Sprintf("%+v", st) })
	ep := st.Endpoints[0]
	if !st.Connected || st.Server != e.broker.URL || ep.Key != "gw-001" || ep.AppliedID != "v7" || ep.LastStatus != "ok" || ep.Pending != 0 {
		t.Errorf("status = %+v, want connected, gw-001 applied v7 ok, nothing pending", st)
	}
	out, _, code := runCLI(t, "status", "--config", e.config)
	for _, want := range []string{"connected to " + e.broker.URL, "gw-001", "v7", "v7: ok", e.output} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("status: exit %d, output lacks %q:\n%s", code, want, out)
		}
	}

	out, stderr, code = runCLI(t, "sync", "--config", e.config)
	if code != 0 || out != "latest configuration requested for 1 endpoint\n" {
		t.Errorf("sync: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	e.waitPull(t)
}

func TestSync_OfflineAgentExits1(t *testing.T) {
	e := newCrashEnv(t)
	e.broker.Stop(t)
	p := startAgent(t, e.config)
	p.waitLine(t, "cmx-agent started")
	var stderr string
	code := -1
	testkit.Eventually(t, 20*time.Second, func() bool {
		_, stderr, code = runCLI(t, "sync", "--config", e.config)
		return strings.Contains(stderr, "the agent answered")
	}, "sync never reached the agent: exit %s", func() string { return fmt.Sprintf("%d, stderr %q", code, stderr) })
	if code != 1 || !strings.Contains(stderr, "not connected to the broker") {
		t.Errorf("sync offline: exit %d, stderr %q; want 1 and 'not connected to the broker'", code, stderr)
	}
}

func TestStatus_BadConfigExits2(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(bad, []byte("[agent]\nnope = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runCLI(t, "status", "--config", bad)
	if code != 2 || !strings.Contains(stderr, bad+":") {
		t.Errorf("status with a bad config: exit %d, stderr %q", code, stderr)
	}
}
