package agent

import (
	"github.com/cmx-agent/cmx-agent/engine"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitLogWithin waits until the agent's log holds s at least n times.
func (h *harness) waitLogWithin(s string, n int, within time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(slack(within))
	for strings.Count(h.logs.String(), s) < n {
		if time.Now().After(deadline) {
			h.t.Fatalf("log holds %q %d times after %v, want %d", s, strings.Count(h.logs.String(), s), within, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// slack turns a promised time into a test deadline. Tests do not assert timings (a loaded CI
// machine would make them flaky; the benchmark measures): they fail only when the promise is missed
// by far, which a hang or a repair loop does, and log the time it took.
func slack(within time.Duration) time.Duration { return max(5*within, 10*time.Second) }

// waitFileWithin waits for path to hold want, for a promise of within; it returns how long it took.
func (h *harness) waitFileWithin(path string, want []byte, within time.Duration) time.Duration {
	h.t.Helper()
	start := time.Now()
	for {
		got, err := os.ReadFile(path)
		if err == nil && string(got) == string(want) {
			took := time.Since(start)
			if took > within {
				h.t.Logf("%s took %v, promised within %v (a loaded machine?)", path, took, within)
			}
			return took
		}
		if time.Since(start) > slack(within) {
			h.t.Fatalf("%s = %q (%v) after %v, want %q (promised within %v)", path, got, err, slack(within), want, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDrift_EditsAndDeletionAreRepairedWithinASecondWithoutHookOrLoop(t *testing.T) {
	h := newPipelineHarness(t, `hook = ["{dir}/hook.sh"]`)
	h.script("hook.sh", hookLog)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["applied"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	out := h.output("gw-001")
	want := []byte(`["applied"]`)
	edits := []struct {
		name string
		do   func() error
	}{
		{"in-place write", func() error { return os.WriteFile(out, []byte("hand edit"), 0o644) }},
		{"atomic replacement", func() error {
			tmp := filepath.Join(filepath.Dir(out), "editor.swp")
			if err := os.WriteFile(tmp, []byte("editor save"), 0o644); err != nil {
				return err
			}
			return os.Rename(tmp, out)
		}},
		{"deletion", func() error { return os.Remove(out) }},
		{"truncation", func() error { return os.Truncate(out, 0) }},
	}
	for i, e := range edits {
		if err := e.do(); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		took := h.waitFileWithin(out, want, time.Second)
		t.Logf("%s repaired in %v", e.name, took)
		h.waitLogWithin("output changed locally; repaired", i+1, time.Second)
	}
	// No loop: the repairs' own writes are not drift. Give a loop time to show.
	time.Sleep(4 * engine.DriftDebounce)
	if n := strings.Count(h.logs.String(), "output changed locally; repaired"); n != len(edits) {
		t.Errorf("%d repairs logged, want %d", n, len(edits))
	}
	if got := readLines(t, filepath.Join(h.dir, "hook.log")); len(got) != 1 {
		t.Errorf("hook runs %q, want only the apply's (none for repairs)", got)
	}
}

func TestDrift_FolderRemovedIsRecreatedAndWatchedAgain(t *testing.T) {
	h := newPipelineHarness(t, "")
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["applied"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	out := h.output("gw-001")
	want := []byte(`["applied"]`)
	if err := os.RemoveAll(filepath.Dir(out)); err != nil {
		t.Fatal(err)
	}
	h.waitFileWithin(out, want, 2*time.Second)
	// The new folder is watched: an edit in it is repaired too.
	h.waitLogWithin("output changed locally; repaired", 1, time.Second)
	deadline := time.Now().Add(2 * time.Second)
	for {
		os.WriteFile(out, []byte("edit in the new folder"), 0o644)
		if h.waitRepairOrTimeout(out, want, 2*engine.DriftDebounce+engine.DriftRetry) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("edit in the recreated folder not repaired")
		}
	}
}

// waitRepairOrTimeout reports whether path holds want within d.
func (h *harness) waitRepairOrTimeout(path string, want []byte, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if got, err := os.ReadFile(path); err == nil && string(got) == string(want) {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

func TestDrift_ReportLogsOnceAndLeavesTheFile(t *testing.T) {
	h := newPipelineHarness(t, `on_drift = "report"`)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["applied"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	out := h.output("gw-001")
	os.WriteFile(out, []byte("local"), 0o644)
	h.waitLogWithin("output changed locally; on_drift = report", 1, time.Second)
	time.Sleep(4 * engine.DriftDebounce)
	if got, _ := os.ReadFile(out); string(got) != "local" {
		t.Errorf("output = %q, want the local edit left as it is", got)
	}
	if n := strings.Count(h.logs.String(), "output changed locally"); n != 1 {
		t.Errorf("%d drift reports, want 1", n)
	}
}

func TestDrift_IgnoreLeavesTheFileSilently(t *testing.T) {
	h := newPipelineHarness(t, `on_drift = "ignore"`)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["applied"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	out := h.output("gw-001")
	os.WriteFile(out, []byte("local"), 0o644)
	time.Sleep(4 * engine.DriftDebounce)
	if got, _ := os.ReadFile(out); string(got) != "local" {
		t.Errorf("output = %q", got)
	}
	if strings.Contains(h.logs.String(), "output changed locally") {
		t.Errorf("drift logged with on_drift = ignore")
	}
}

func TestDrift_AtStartTheOutputIsRepaired(t *testing.T) {
	h := newPipelineHarness(t, "")
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["applied"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	h.stop()
	os.WriteFile(h.output("gw-001"), []byte("edited while the agent was down"), 0o644)
	h.start()
	h.waitFileWithin(h.output("gw-001"), []byte(`["applied"]`), 2*time.Second)
}
