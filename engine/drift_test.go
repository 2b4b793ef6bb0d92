package engine

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/store"
)

// settle is how long a test waits to show that something does not happen (a repair loop, a second
// report): many debounce periods, in which a loop would have gone round more than once. The tests
// run it on a warped clock (warp), where it takes a fiftieth of that in real time.
const settle = 20 * DriftDebounce

func TestDrift_EditsAndDeletionAreRepairedWithoutHookOrLoop(t *testing.T) {
	t.Parallel()
	ep, hookRuns := withHookLog(t)
	c := startCoreWith(t, coreOptions{Clock: warp(t)}, ep)
	wantStatus(t, c.push(`1`, `["applied"]`), "ok")
	out := c.output("gw")
	const want = `["applied"]`
	edits := []struct {
		name string
		do   func() error
	}{
		{"in-place write", func() error { return os.WriteFile(out, []byte("hand edit"), 0o644) }},
		{"atomic replacement", func() error { replaceFile(t, out, "editor save"); return nil }},
		{"deletion", func() error { return os.Remove(out) }},
		{"truncation", func() error { return os.Truncate(out, 0) }},
	}
	for i, e := range edits {
		if err := e.do(); err != nil {
			t.Fatalf("%s: %v", e.name, err)
		}
		c.waitFile(out, want)
		c.waitRepairs("gw", uint64(i+1))
	}
	c.pass(settle) // proves absence: the repairs' own writes are not taken for drift
	if got := readLines(t, hookRuns); len(got) != 1 {
		t.Errorf("hook runs %q, want only the apply's (none for repairs)", got)
	}
	if n := c.e.eps["gw"].stats.driftRepairs.Load(); n != uint64(len(edits)) {
		t.Errorf("drift repairs counted %d, want %d (one per edit)", n, len(edits))
	}
}

func TestDrift_FolderRemovedIsRecreatedAndWatchedAgain(t *testing.T) {
	t.Parallel()
	c := startCoreWith(t, coreOptions{Clock: warp(t)}, config.Endpoint{Token: "gw"})
	wantStatus(t, c.push(`1`, `["applied"]`), "ok")
	out := c.output("gw")
	const want = `["applied"]`
	// A repair may put the file back while the folder is being emptied: remove until it is gone.
	testkit.Eventually(t, testWait, func() bool { return os.RemoveAll(filepath.Dir(out)) == nil }, "%s not removed", filepath.Dir(out))
	c.waitFile(out, want)
	c.waitRepairs("gw", 1)
	// The new folder is watched: an edit in it is repaired too. The watch is set a moment after the
	// folder is back, so an edit made before it may go unseen: edit until one is repaired.
	testkit.Eventually(t, testWait, func() bool {
		if err := os.WriteFile(out, []byte("edit in the new folder"), 0o644); err != nil {
			t.Fatal(err)
		}
		return c.waitRepair(out, want, 2*DriftDebounce+DriftRetry)
	}, "edit in the recreated folder not repaired")
}

// waitRepairs waits until the endpoint with key has counted n drift repairs.
func (c *core) waitRepairs(key string, n uint64) {
	c.t.Helper()
	ep := c.e.eps[key]
	testkit.Eventually(c.t, testWait, func() bool { return ep.stats.driftRepairs.Load() >= n },
		"%s: %s drift repairs, want %d", key, func() string { return fmt.Sprint(ep.stats.driftRepairs.Load()) }, n)
}

// waitRepair reports whether path holds want within d on the engine's clock.
func (c *core) waitRepair(path, want string, d time.Duration) bool {
	clk := clock.OrReal(c.opt.Clock)
	deadline := clk.Now().Add(d)
	for clk.Now().Before(deadline) {
		if got, err := os.ReadFile(path); err == nil && string(got) == want {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}

// replaceFile puts content at path as an editor saving atomically does, so a check never sees the
// file half written.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".swp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestDrift_ReportLogsOnceAndLeavesTheFile(t *testing.T) {
	t.Parallel()
	const report = "output changed locally; on_drift = report"
	c := startCoreWith(t, coreOptions{Clock: warp(t)}, config.Endpoint{Token: "gw", OnDrift: config.OnDriftReport})
	wantStatus(t, c.push(`1`, `["applied"]`), "ok")
	out := c.output("gw")
	replaceFile(t, out, "local")
	c.waitLog(report, 1)
	replaceFile(t, out, "local") // the same change again: events, no new report
	c.pass(settle)               // proves absence: no repair and no second report
	wantFile(t, out, "local")
	if n := strings.Count(c.logs.String(), "output changed locally"); n != 1 {
		t.Errorf("%d drift reports, want 1", n)
	}
	// Another change is reported once more.
	replaceFile(t, out, "local, edited again")
	c.waitLog(report, 2)
}

func TestDrift_IgnoreLeavesTheFileSilently(t *testing.T) {
	t.Parallel()
	c := startCoreWith(t, coreOptions{Clock: warp(t)}, config.Endpoint{Token: "gw", OnDrift: config.OnDriftIgnore})
	wantStatus(t, c.push(`1`, `["applied"]`), "ok")
	out := c.output("gw")
	replaceFile(t, out, "local")
	c.pass(settle) // proves absence: nothing repairs or reports the change
	wantFile(t, out, "local")
	if strings.Contains(c.logs.String(), "output changed locally") {
		t.Errorf("drift logged with on_drift = ignore")
	}
}

func TestDrift_AtStartTheOutputIsRepaired(t *testing.T) {
	t.Parallel()
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw"})
	wantStatus(t, c.push(`1`, `["applied"]`), "ok")
	c.stop()
	os.WriteFile(c.output("gw"), []byte("edited while the agent was down"), 0o644)
	c.run()
	c.waitFile(c.output("gw"), `["applied"]`)
	c.waitRepairs("gw", 1)
}

// The drift check runs on the endpoint's goroutine, where a push to it waits (and, PUBACKs going in
// arrival order, every later push of the connection): an output replaced by a huge file (a
// misdirected log, a copied image) must not be read whole to find that it is not the applied one.
func TestDrift_AHugeFileAtTheOutputIsFoundChangedWithoutReadingIt(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := &config.Config{
		Kaa:       config.Kaa{AppVersion: "app", Extension: "cmx", Dialect: config.DialectCMX3},
		Agent:     config.Agent{StateDir: filepath.Join(dir, "state"), MaxPayload: 1 << 16},
		Endpoints: []config.Endpoint{{Token: "gw", Output: filepath.Join(dir, "gw.json"), OnDrift: config.OnDriftReport}},
	}
	logs := &testkit.Buffer{}
	e, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	applied := []byte(`["applied"]`)
	if err := e.store.Update(func(tx *store.Tx) error { return tx.SetApplied("gw", applied, nil, false) }); err != nil {
		t.Fatal(err)
	}
	m := &e.eps["gw"].m
	m.st = &store.EndpointState{AppliedID: "1", AppliedText: "1", AppliedHash: store.Hash(applied)}
	f, err := os.Create(cfg.Endpoints[0].Output)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4 << 30); err != nil { // sparse: 4 GiB that take no room
		t.Fatal(err)
	}
	f.Close()
	start := time.Now()
	e.checkDrift(m)
	if took := time.Since(start); took > time.Second {
		t.Errorf("the drift check took %v", took)
	}
	if !strings.Contains(logs.String(), "output changed locally; on_drift = report") {
		t.Errorf("no drift reported:\n%s", logs.String())
	}
}
