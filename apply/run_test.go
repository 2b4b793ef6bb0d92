package apply

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/clock/clocktest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

func TestRun_ExitZeroIsNil(t *testing.T) {
	if err := Run(context.Background(), Command{Argv: []string{"true"}}); err != nil {
		t.Fatalf("Run(true) = %v", err)
	}
}

func TestRun_FailureCarriesExitStatusAndFirstStderrLine(t *testing.T) {
	err := Run(context.Background(), Command{Argv: sh("echo out; echo >&2; echo '  bad key: x  ' >&2; echo second >&2; exit 3")})
	var re *RunError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v, want *RunError", err)
	}
	if re.ExitCode != 3 || re.FirstStderr != "bad key: x" {
		t.Errorf("ExitCode %d FirstStderr %q", re.ExitCode, re.FirstStderr)
	}
	if got := err.Error(); got != "exit 3: bad key: x" {
		t.Errorf("Error() = %q", got)
	}
}

func TestRun_MissingProgramIsAnError(t *testing.T) {
	err := Run(context.Background(), Command{Argv: []string{"/nonexistent/prog"}})
	if err == nil || !strings.HasPrefix(err.Error(), "cannot start: ") {
		t.Fatalf("err = %v", err)
	}
}

func TestRun_GetsEnvironmentButNoInheritedCMXVariables(t *testing.T) {
	t.Setenv("CMX_CANDIDATE", "/stale")
	t.Setenv("KEEP_ME", "yes")
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	err := Run(context.Background(), Command{
		Argv: sh(`printf '%s|%s|%s' "$CMX_TOKEN" "${CMX_CANDIDATE-unset}" "$KEEP_ME" > ` + out),
		Env:  []string{"CMX_TOKEN=gw-1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "gw-1|unset|yes" {
		t.Errorf("environment seen = %q", b)
	}
}

// A hook that hangs, with a child of its own, is killed at the timeout together with the child.
func TestRun_TimeoutKillsTheProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	start := time.Now()
	err := Run(context.Background(), Command{
		Argv:    sh("echo hanging >&2; sleep 60 & echo $! > " + pidFile + "; wait"),
		Timeout: time.Second,
	})
	took := time.Since(start)
	var re *RunError
	if !errors.As(err, &re) || re.TimedOut != time.Second {
		t.Fatalf("err = %v, want a timeout", err)
	}
	if got := err.Error(); got != "timed out after 1s: hanging" {
		t.Errorf("Error() = %q", got)
	}
	if took > 3*time.Second {
		t.Errorf("Run returned after %v", took)
	}
	b, _ := os.ReadFile(pidFile)
	pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if perr != nil {
		t.Fatalf("child pid %q", b)
	}
	// A killed child stays a zombie until its parent (the killed shell, reaped by init) is gone.
	testkit.Eventually(t, 2*time.Second, func() bool {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		return bytes.Contains(st, []byte(") Z "))
	}, "child %d of the timed-out command still runs", pid)
}

// A command that exits 0 but leaves a child holding its output must not hold the caller.
func TestRun_BackgroundChildHoldingOutputDoesNotBlock(t *testing.T) {
	start := time.Now()
	err := Run(context.Background(), Command{Argv: sh("sleep 5 & exit 0")})
	if err != nil {
		t.Fatalf("err = %v", err)
	}
	if took := time.Since(start); took > killGrace+2*time.Second {
		t.Errorf("took %v", took)
	}
}

func TestRun_OutputIsLoggedAndBounded(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	err := Run(context.Background(), Command{
		Argv: sh("echo hello; head -c 100000 /dev/zero | tr '\\0' x"),
		Log:  log, What: "hook",
	})
	if err != nil {
		t.Fatal(err)
	}
	s := logs.String()
	if !strings.Contains(s, `line=hello`) || !strings.Contains(s, "command output truncated") {
		t.Errorf("log:\n%.500s", s)
	}
	if len(s) > 2*OutputLimit {
		t.Errorf("log is %d bytes, want about %d at most", len(s), OutputLimit)
	}
}

// A command stopped by its caller is reported as stopped, even when its timeout passes while the
// agent still reaps it (a child in another session holds its output for up to killGrace): the
// first cause wins, as with a context deadline.
func TestRun_AStopIsNotReportedAsATimeoutThatPassesWhileReaping(t *testing.T) {
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	clk := clocktest.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Command{
			Argv:    sh("setsid sleep 3 & touch " + started + "; sleep 60"),
			Timeout: time.Second,
			Clock:   clk,
		})
	}()
	testkit.Eventually(t, 10*time.Second, func() bool { _, err := os.Stat(started); return err == nil }, "the command did not start")
	cancel()
	// Run now waits up to killGrace for the output held by the setsid child; the timeout passes.
	clk.Advance(time.Second)
	err := <-done
	var re *RunError
	if !errors.As(err, &re) || re.TimedOut != 0 || !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v (timed out: %v), want a stop by the caller", err, re != nil && re.TimedOut != 0)
	}
}
