package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/clock"
)

// Command is an operator's validate or hook command: an argv run directly, never through a shell,
// so nothing in a configuration can be interpreted as shell syntax.
type Command struct {
	Argv []string
	// Env is added to the agent's own environment (KEY=value). Variables starting with CMX_ that the
	// agent inherited are dropped first, so a command never sees a stale CMX_CANDIDATE.
	Env     []string
	Timeout time.Duration // 0 = no limit
	// Clock times Timeout; nil is the system's clock.
	Clock clock.Clock
	// Log receives the command's stdout and stderr, one record per line, bounded by OutputLimit.
	Log  *slog.Logger
	What string // "validate" or "hook", for the log
}

// OutputLimit bounds how much of a command's stdout and stderr (each) is kept and logged: a chatty
// or looping command must not fill the journal or the agent's memory.
const OutputLimit = 16 << 10

// errTimedOut is the cause of a command's context ended by its timeout.
var errTimedOut = errors.New("command timed out")

// killGrace is how long Wait keeps reading the output pipes after the command has ended: a
// background child that inherited them must not hold the agent.
const killGrace = 2 * time.Second

// RunError is a command that did not succeed. Its Error text is what the cloud side reads in a
// status: "exit 3: first line of stderr", "timed out after 30s", "killed by signal 9".
type RunError struct {
	ExitCode    int            // -1 when killed by a signal or never started
	Signal      syscall.Signal // the signal that ended it, 0 if none
	TimedOut    time.Duration  // non-zero: killed with its process group at this timeout
	FirstStderr string         // first non-empty line of stderr, trimmed, at most 200 bytes
	Err         error          // a start failure (not found, not executable)
}

func (e *RunError) Error() string {
	var s string
	switch {
	case e.Err != nil:
		s = "cannot start: " + e.Err.Error()
	case e.TimedOut > 0:
		s = "timed out after " + e.TimedOut.String()
	case e.Signal != 0:
		s = fmt.Sprintf("killed by signal %d (%s)", int(e.Signal), e.Signal)
	default:
		s = fmt.Sprintf("exit %d", e.ExitCode)
	}
	if e.FirstStderr != "" {
		s += ": " + e.FirstStderr
	}
	return s
}

func (e *RunError) Unwrap() error { return e.Err }

// Run runs c and waits for it. It returns nil when the command exited 0 in time, a *RunError
// otherwise. The command gets its own process group; at the timeout, or when ctx ends, the whole
// group is killed with SIGKILL, so children the command started (a shell script's sleep, a reload
// helper) cannot outlive it and keep running unseen.
func Run(ctx context.Context, c Command) error {
	if len(c.Argv) == 0 {
		return &RunError{ExitCode: -1, Err: errors.New("empty command")}
	}
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	clk := clock.OrReal(c.Clock)
	// The timeout cancels runCtx with errTimedOut as its cause; a stop by the caller that came first
	// stays the cause, as with a context deadline.
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if c.Timeout > 0 {
		t := clk.AfterFunc(c.Timeout, func() { cancel(errTimedOut) })
		defer t.Stop()
	}

	cmd := exec.CommandContext(runCtx, c.Argv[0], c.Argv[1:]...)
	cmd.Env = commandEnv(os.Environ(), c.Env)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The negative pid is the process group, which Setpgid made equal to the command's pid.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = killGrace
	stdout := &boundedBuffer{limit: OutputLimit}
	stderr := &boundedBuffer{limit: OutputLimit}
	cmd.Stdout, cmd.Stderr = stdout, stderr

	start := clk.Now()
	err := cmd.Run()
	timedOut := errors.Is(context.Cause(runCtx), errTimedOut)
	if timedOut || ctx.Err() != nil {
		// The command may have exited before the group was killed; its children may not have.
		if cmd.Process != nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	}
	logOutput(log, c.What, "stdout", stdout)
	logOutput(log, c.What, "stderr", stderr)

	re := &RunError{ExitCode: -1, FirstStderr: firstLine(stderr.Bytes())}
	var exitErr *exec.ExitError
	switch {
	case err == nil || errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success():
		if timedOut {
			re.TimedOut = c.Timeout
			return re
		}
		log.Debug("command succeeded", "what", c.What, "argv", c.Argv, "took", clk.Now().Sub(start).Round(time.Millisecond))
		return nil
	case timedOut:
		re.TimedOut = c.Timeout
	case errors.As(err, &exitErr):
		ws, _ := exitErr.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			re.Signal = ws.Signal()
		} else {
			re.ExitCode = exitErr.ExitCode()
		}
	case cmd.ProcessState == nil:
		re.Err = err
	default:
		re.Err = err
	}
	if ctx.Err() != nil && re.TimedOut == 0 {
		re.Err = fmt.Errorf("stopped: %w", ctx.Err())
	}
	return re
}

// commandEnv is base without inherited CMX_ variables, followed by extra.
func commandEnv(base, extra []string) []string {
	env := make([]string, 0, len(base)+len(extra))
	for _, kv := range base {
		if !strings.HasPrefix(kv, "CMX_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

func logOutput(log *slog.Logger, what, stream string, b *boundedBuffer) {
	if b.Len() == 0 {
		return
	}
	for line := range strings.Lines(string(b.Bytes())) {
		line = strings.TrimRight(line, "\r\n")
		if line != "" {
			log.Info("command output", "what", what, "stream", stream, "line", line)
		}
	}
	if b.dropped > 0 {
		log.Warn("command output truncated", "what", what, "stream", stream, "dropped_bytes", b.dropped)
	}
}

// firstLine is the first non-empty line of b, trimmed and cut to 200 bytes: enough to say what went
// wrong in a status without carrying a whole log to the cloud.
func firstLine(b []byte) string {
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if len(line) > 200 {
			line = strings.ToValidUTF8(line[:200], "") + "…"
		}
		return line
	}
	return ""
}

// boundedBuffer keeps the first limit bytes written to it and counts the rest.
type boundedBuffer struct {
	buf     bytes.Buffer
	limit   int
	dropped int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	room := b.limit - b.buf.Len()
	if room >= len(p) {
		return b.buf.Write(p)
	}
	if room > 0 {
		b.buf.Write(p[:room])
	}
	b.dropped += len(p) - max(room, 0)
	return len(p), nil
}

func (b *boundedBuffer) Bytes() []byte { return b.buf.Bytes() }
func (b *boundedBuffer) Len() int      { return b.buf.Len() }
