package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// --socket reaches the running agent while its configuration file is broken: the file is not read.
func TestSocket_ReachesTheRunningAgentWithABrokenConfigurationFile(t *testing.T) {
	e := newCrashEnv(t)
	p := startAgent(t, e.config)
	e.waitPull(t)
	p.waitLine(t, "local API listening") // served beside the connection, not before it
	socket := filepath.Join(e.dir, "state", "agent.sock")
	writeOrFail(t, e.config, "[kaa]\nthis is not TOML\n")

	var stdout, stderr bytes.Buffer
	if code := run([]string{"status", "--config", e.config}, &stdout, &stderr); code != 2 {
		t.Errorf("status --config on the broken file: exit %d, want 2 (the file is read)", code)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--socket", socket}, "\ngw-001 "},
		{[]string{"status", "--socket", socket, "--json"}, `"key": "gw-001"`},
		{[]string{"sync", "--socket", socket}, "latest configuration requested for 1 endpoint\n"},
	} {
		stdout.Reset()
		stderr.Reset()
		if code := run(tc.args, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), tc.want) {
			t.Errorf("%q: exit %d\nstdout: %s\nstderr: %s\nwant exit 0 and %q", tc.args, code, stdout.String(), stderr.String(), tc.want)
		}
	}
	// The bundle still reads the (broken) file for itself, but asks the agent at --socket.
	out := filepath.Join(t.TempDir(), "b.tar.gz")
	stderr.Reset()
	if code := run([]string{"bundle", "--config", e.config, "--socket", socket, "-o", out, "--journal-lines", "0"}, io.Discard, &stderr); code != 0 {
		t.Fatalf("bundle --socket: exit %d: %s", code, stderr.String())
	}
	if files := untar(t, out); !strings.Contains(files["status.json"], `"key": "gw-001"`) {
		t.Errorf("the bundle's status.json lacks the running agent's endpoint:\n%s\nstatus.txt: %s", files["status.json"], files["status.txt"])
	}
}

func TestSocket_AndConfigTogetherIsAUsageError(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"status", "--config", "a.toml", "--socket", "a.sock"}, &stdout, &stderr)
	if code != 2 || !strings.Contains(stderr.String(), "give --config or --socket, not both") {
		t.Errorf("exit %d, stderr %q; want 2 and the reason", code, stderr.String())
	}
}

// A socket the user may not open means a missing right, not a missing agent.
func TestSocket_PermissionDeniedSaysRootOrTheGroup(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(socket, 0o600); err != nil {
		t.Fatal(err)
	}
	want := "permission denied on " + socket + ": run as root or join the cmx-agent group"
	if os.Geteuid() != 0 {
		if err := os.Chmod(socket, 0); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		if code := run([]string{"status", "--socket", socket}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), want) {
			t.Errorf("exit %d, stderr %q; want 1 and %q", code, stderr.String(), want)
		}
		return
	}
	// Root may open any socket: the binary runs as nobody, from a folder nobody may enter.
	bin := filepath.Join(dir, "cmx-agent")
	src, err := os.ReadFile(binary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, cmd := range []string{"status", "sync"} {
		c := exec.Command(bin, cmd, "--socket", socket)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stderr bytes.Buffer
		c.Stderr = &stderr
		err := c.Run()
		if code := c.ProcessState.ExitCode(); code != 1 || !strings.Contains(stderr.String(), want) {
			t.Errorf("%s as nobody: exit %d (%v), stderr %q; want 1 and %q", cmd, code, err, stderr.String(), want)
		}
	}
}
