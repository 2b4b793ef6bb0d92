package testkit

import (
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// run is Failure for the tests of this package.
func run(t *testing.T, f func(testing.TB)) string { return Failure(t, f) }

func TestEventually_ReturnsOnceTheConditionHolds(t *testing.T) {
	var calls atomic.Int32
	start := time.Now()
	failed := run(t, func(tb testing.TB) {
		Eventually(tb, 10*time.Second, func() bool { return calls.Add(1) >= 3 }, "three calls")
	})
	if failed != "" {
		t.Fatalf("failed: %s", failed)
	}
	if calls.Load() != 3 {
		t.Errorf("cond called %d times, want 3 (no call after it held)", calls.Load())
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v for three polls of %v", d, PollInterval)
	}
}

func TestEventually_FailsWithTheMessageAtTheTimeout(t *testing.T) {
	cases := []struct {
		name string
		args []any
		want string
	}{
		{"no message", nil, "condition not met within 20ms"},
		{"format", []any{"output %s = %d", "a", 7}, "output a = 7 within 20ms"},
		{"not a format", []any{42}, "42 within 20ms"},
		{"a func argument", []any{"log: %s", func() string { return "a line" }}, "log: a line within 20ms"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			failed := run(t, func(tb testing.TB) {
				Eventually(tb, 20*time.Millisecond, func() bool { return false }, c.args...)
			})
			if failed != c.want {
				t.Errorf("failure %q, want %q", failed, c.want)
			}
			if d := time.Since(start); d < 20*time.Millisecond {
				t.Errorf("failed after %v, before the timeout", d)
			}
		})
	}
}

func TestEventually_MessageShowsTheStateAtTheDeadline(t *testing.T) {
	var polls atomic.Int32
	failed := run(t, func(tb testing.TB) {
		Eventually(tb, 50*time.Millisecond, func() bool { polls.Add(1); return false },
			"polled %s times", func() string { return strconv.Itoa(int(polls.Load())) })
	})
	if want := "polled " + strconv.Itoa(int(polls.Load())) + " times within 50ms"; failed != want || polls.Load() < 2 {
		t.Errorf("failure %q, want %q (after several polls)", failed, want)
	}
}

func TestEventually_ChecksOnceMoreAtTheDeadline(t *testing.T) {
	// The condition turns true between the last tick and the deadline: a poll that gave up
	// without a last look would report a condition that held.
	deadline := time.Now().Add(PollInterval / 2)
	failed := run(t, func(tb testing.TB) {
		Eventually(tb, PollInterval/2, func() bool { return !time.Now().Before(deadline) })
	})
	if failed != "" {
		t.Errorf("failed: %s", failed)
	}
}

func TestWaitFile_ReturnsWhenTheFileHoldsExactlyWant(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.json")
	if err := os.WriteFile(path, []byte(`[1`), 0o600); err != nil {
		t.Fatal(err)
	}
	go func() {
		if err := os.WriteFile(path+".tmp", []byte(`[1]`), 0o600); err != nil {
			panic(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			panic(err)
		}
	}()
	if failed := run(t, func(tb testing.TB) { WaitFile(tb, path, []byte(`[1]`), 10*time.Second) }); failed != "" {
		t.Fatalf("failed: %s", failed)
	}
}

func TestWaitFile_FailureSaysWhatTheFileHeld(t *testing.T) {
	dir := t.TempDir()
	held := filepath.Join(dir, "held.json")
	if err := os.WriteFile(held, []byte(`[0]`), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path, want string
	}{
		{"other bytes", held, held + ` = "[0]" after 20ms, want "[1]"`},
		{"missing", filepath.Join(dir, "none"), "no such file or directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			failed := run(t, func(tb testing.TB) { WaitFile(tb, c.path, []byte(`[1]`), 20*time.Millisecond) })
			if !strings.Contains(failed, c.want) {
				t.Errorf("failure %q, want it to contain %q", failed, c.want)
			}
		})
	}
}

func TestBuffer_LinesLeavesOutAnUnfinishedLine(t *testing.T) {
	var b Buffer
	if got := b.Lines(); len(got) != 0 {
		t.Errorf("empty buffer: lines %q", got)
	}
	b.Write([]byte("one\ntwo\nthr"))
	if got := b.Lines(); strings.Join(got, "|") != "one|two" {
		t.Errorf("lines %q, want one and two", got)
	}
	b.Write([]byte("ee\n"))
	if got := b.Lines(); strings.Join(got, "|") != "one|two|three" {
		t.Errorf("lines %q, want one, two and three", got)
	}
	if got := b.String(); got != "one\ntwo\nthree\n" {
		t.Errorf("String() = %q", got)
	}
}

func TestBuffer_IsASlogTargetForConcurrentLoggers(t *testing.T) {
	var b Buffer
	log := slog.New(slog.NewTextHandler(&b, nil))
	const writers, each = 8, 50
	for w := range writers {
		go func() {
			for i := range each {
				log.Info("applied", "writer", w, "i", i)
			}
		}()
	}
	lines := b.WaitN(t, "msg=applied", writers*each, 10*time.Second)
	if len(lines) != writers*each {
		t.Fatalf("%d lines, want %d", len(lines), writers*each)
	}
	if n := b.Count("msg=applied"); n != writers*each {
		t.Errorf("Count = %d, want %d", n, writers*each)
	}
	for _, l := range b.Lines() {
		if !strings.HasPrefix(l, "time=") || !strings.Contains(l, "level=INFO msg=applied writer=") {
			t.Fatalf("torn line %q", l)
		}
	}
}

func TestBuffer_WaitReturnsTheFirstMatchingLine(t *testing.T) {
	var b Buffer
	b.Write([]byte("connecting\n"))
	go b.Write([]byte("connected to 127.0.0.1\nconnected again\n"))
	if got := b.Wait(t, "connected", 10*time.Second); got != "connected to 127.0.0.1" {
		t.Errorf("Wait = %q, want the first line with the text", got)
	}
}

func TestBuffer_WaitFailureShowsWhatWasWritten(t *testing.T) {
	var b Buffer
	b.Write([]byte("started\napplied 1\n"))
	failed := run(t, func(tb testing.TB) { b.WaitN(tb, "applied", 2, 20*time.Millisecond) })
	want := "1 of 2 lines with \"applied\" within 20ms; written so far:\nstarted\napplied 1\n"
	if failed != want {
		t.Errorf("failure %q, want %q", failed, want)
	}
}

func TestFailure_ReturnsWhatTheHelperReported(t *testing.T) {
	cases := []struct {
		name   string
		helper func(testing.TB)
		want   string
	}{
		{"Fatalf", func(tb testing.TB) { tb.Fatalf("want %d", 2) }, "want 2"},
		{"Fatal", func(tb testing.TB) { tb.Fatal("want", 2) }, "want2"},
		{"no failure", func(testing.TB) {}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ran := false
			got := Failure(t, func(tb testing.TB) {
				c.helper(tb)
				ran = true
			})
			if got != c.want {
				t.Errorf("Failure = %q, want %q", got, c.want)
			}
			if ran != (c.want == "") {
				t.Errorf("the helper went on after its failure: %v", ran)
			}
		})
	}
}
