// Package testkit holds what the project's tests share to wait for an outcome: Eventually polls
// a condition until a deadline, Buffer collects what a logger or a child process writes while
// the test reads it, and WaitFile waits for a file's exact bytes. Only tests import it.
//
// Waiting is polling with a short interval: the conditions a test waits for (a file's bytes, a
// counter, a log line) have no event to wait on, and a poll every few milliseconds costs the
// test nothing next to what it waits for.
package testkit

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// PollInterval is how often Eventually checks its condition: short enough that a test waits a
// few milliseconds at most beyond the event, long enough that a waiting test does not take a
// core from what it waits for.
const PollInterval = 5 * time.Millisecond

// Eventually polls cond until it returns true, or fails the test with t.Fatalf after timeout.
// msgAndArgs says what was awaited: a format string and its arguments (the timeout is appended);
// without it the message only names the timeout. An argument that is a func() string is called
// at the deadline, so that the message shows the state then (a Buffer's String, say). cond is
// checked once more at the deadline, so a condition met in the last interval is not reported as
// missed.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	if poll(timeout, cond) {
		return
	}
	t.Fatalf("%s within %v", message(msgAndArgs), timeout)
}

// poll reports whether cond became true within timeout.
func poll(timeout time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if cond() {
				return true
			}
		case <-deadline.C:
			return cond()
		}
	}
}

// message formats msgAndArgs as Eventually documents it.
func message(msgAndArgs []any) string {
	if len(msgAndArgs) == 0 {
		return "condition not met"
	}
	args := make([]any, len(msgAndArgs))
	for i, a := range msgAndArgs {
		if f, ok := a.(func() string); ok {
			a = f()
		}
		args[i] = a
	}
	if format, ok := args[0].(string); ok {
		return fmt.Sprintf(format, args[1:]...)
	}
	return fmt.Sprint(args...)
}

// WaitFile waits until the file at path holds exactly want, or fails the test after timeout
// with what the file held last (or why it could not be read).
func WaitFile(t testing.TB, path string, want []byte, timeout time.Duration) {
	t.Helper()
	var (
		got []byte
		err error
	)
	if poll(timeout, func() bool {
		got, err = os.ReadFile(path)
		return err == nil && bytes.Equal(got, want)
	}) {
		return
	}
	if err != nil {
		t.Fatalf("%s not readable within %v (%v), want %q", path, timeout, err, want)
	}
	t.Fatalf("%s = %q after %v, want %q", path, got, timeout, want)
}

// Buffer is an io.Writer that goroutines and child processes may write to while the test reads
// it: the target of a slog handler or of a process's stdout and stderr. The zero value is
// empty and ready to use.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p; it never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns the complete lines written so far, without their newlines; a last line whose
// newline has not been written yet is left out, so a caller never sees half a log record.
func (b *Buffer) Lines() []string {
	s := b.String()
	end := strings.LastIndexByte(s, '\n')
	if end < 0 {
		return nil
	}
	return strings.Split(s[:end], "\n")
}

// Count returns how many complete lines contain substr.
func (b *Buffer) Count(substr string) int {
	n := 0
	for _, l := range b.Lines() {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// Wait waits until a complete line contains substr and returns the first such line, or fails
// the test after timeout with everything written so far.
func (b *Buffer) Wait(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	return b.WaitN(t, substr, 1, timeout)[0]
}

// WaitN waits until n complete lines contain substr and returns the first n of them, or fails
// the test after timeout with everything written so far.
func (b *Buffer) WaitN(t testing.TB, substr string, n int, timeout time.Duration) []string {
	t.Helper()
	var found []string
	if poll(timeout, func() bool {
		found = found[:0]
		for _, l := range b.Lines() {
			if strings.Contains(l, substr) {
				found = append(found, l)
			}
		}
		return len(found) >= n
	}) {
		return found[:n]
	}
	t.Fatalf("%d of %d lines with %q within %v; written so far:\n%s", len(found), n, substr, timeout, b.String())
	return nil
}

// Failure runs helper with a testing.TB whose Fatal and Fatalf record the message and end the
// helper's goroutine (as the real ones do), and returns the message, "" if helper did not
// fail: the way to test that a test helper fails, and says what it should.
func Failure(t testing.TB, helper func(testing.TB)) string {
	t.Helper()
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		helper(r)
	}()
	<-done
	return r.failed
}

// recorder is the testing.TB of Failure.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Fatal(args ...any) {
	r.failed = fmt.Sprint(args...)
	runtime.Goexit()
}
