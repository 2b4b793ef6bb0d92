package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/clock/clocktest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/store"
)

// hookLog is a hook that records "<config id>=<output bytes>" per run in hook.log beside itself and
// fails (exit 7) on outputs holding "bad".
const hookLog = `echo "$CMX_CONFIG_ID=$(cat "$CMX_OUTPUT")" >> "$(dirname "$0")/hook.log"
if grep -q bad "$CMX_OUTPUT"; then echo "reload failed: bad value" >&2; echo "more detail" >&2; exit 7; fi
`

// withHookLog returns an endpoint gw whose hook is hookLog, and the path of the hook's log.
func withHookLog(t *testing.T) (config.Endpoint, string) {
	dir := t.TempDir()
	return config.Endpoint{Token: "gw", Hook: []string{script(t, dir, "hook.sh", hookLog)}}, filepath.Join(dir, "hook.log")
}

func wantStatus(t *testing.T, got confirmation, want string) {
	t.Helper()
	if got.Status != want {
		t.Errorf("status of %s = %q, want %q", got.ID, got.Status, want)
	}
	if got.Topic != p+"/json/status" || got.QoS != 1 {
		t.Errorf("confirmation of %s at %s QoS %d, want %s/json/status QoS 1 (the push's)", got.ID, got.Topic, got.QoS, p)
	}
}

func wantFile(t *testing.T, path, want string) {
	t.Helper()
	if b, err := os.ReadFile(path); err != nil || string(b) != want {
		t.Errorf("%s = %q (%v), want %q", path, b, err, want)
	}
}

func wantNoFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s exists (%v), want none", path, err)
	}
}

func TestHook_RunsAfterTheFileIsInPlaceWithItsEnvironment(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hook := script(t, dir, "hook.sh", `echo "$CMX_TOKEN $CMX_CONFIG_ID $CMX_OUTPUT ${CMX_CANDIDATE-none} $(cat "$CMX_OUTPUT")" > "$(dirname "$0")/hook.log"`)
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw", Hook: []string{hook}})
	wantStatus(t, c.push(`"cfg 1"`, `["v1"]`), "ok")
	want := fmt.Sprintf("gw cfg 1 %s none [\"v1\"]\n", c.output("gw"))
	wantFile(t, filepath.Join(dir, "hook.log"), want)
}

func TestValidate_RejectsAndChangesNothing(t *testing.T) {
	ep, hookRuns := withHookLog(t)
	ep.Validate = []string{script(t, t.TempDir(), "validate.sh", `
[ "$CMX_OUTPUT" = "$EXPECT_OUTPUT" ] || { echo "wrong CMX_OUTPUT $CMX_OUTPUT" >&2; exit 9; }
[ "$CMX_CANDIDATE" != "$CMX_OUTPUT" ] || { echo "candidate is the output" >&2; exit 9; }
[ -f "$CMX_CANDIDATE" ] || { echo "no candidate file" >&2; exit 9; }
grep -q good "$CMX_CANDIDATE" || { echo "no good in $CMX_CONFIG_ID" >&2; exit 4; }`)}
	ep.Output = filepath.Join(t.TempDir(), "out", "gw.json")
	t.Setenv("EXPECT_OUTPUT", ep.Output) // the agent's environment is passed on to validate
	c := startCoreWith(t, coreOptions{}, ep)
	wantStatus(t, c.push(`1`, `["good"]`), "ok")
	wantStatus(t, c.push(`2`, `["evil"]`), "rejected by validate: exit 4: no good in 2")
	wantFile(t, ep.Output, `["good"]`)
	if got := readLines(t, hookRuns); strings.Join(got, " ") != `1=["good"]` {
		t.Errorf("hook runs %q, want only the one for push 1", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(ep.Output))
	if len(entries) != 1 {
		t.Errorf("output folder holds %d entries, want only the output (no candidate left)", len(entries))
	}
}

// A failed hook puts back what was there before the push, as a file: the last configuration applied
// (and runs the hook for it), or the operator's own file, or nothing.
func TestHook_FailureRollsBack(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		operator string // a file in place before the agent's first apply; "" = none
		first    string // entries of a push 1 applied before the bad one; "" = none
		status   string
		file     string // the output afterwards; "" = no file
		runs     string // hook runs, in order
	}{
		{
			name: "RunsTheHookForTheOldBytes", first: `["good"]`,
			status: "hook failed: exit 7: reload failed: bad value; rolled back to 1",
			file:   `["good"]`, runs: `1=["good"] two=["bad"] 1=["good"]`,
		},
		{
			name:   "WithNoPreviousFileRemovesTheOutput",
			status: "hook failed: exit 7: reload failed: bad value; output removed (there was no previous file)",
			runs:   `two=["bad"]`, // not run again: there is nothing to reload
		},
		{
			name: "OnTheFirstApplyPutsTheOperatorsFileBack", operator: "hand-made",
			status: "hook failed: exit 7: reload failed: bad value; rolled back to the previous file",
			file:   "hand-made", runs: `two=["bad"] =hand-made`, // the restored file has no id
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ep, hookRuns := withHookLog(t)
			ep.Output = filepath.Join(t.TempDir(), "out", "gw.json")
			if tc.operator != "" {
				os.MkdirAll(filepath.Dir(ep.Output), 0o755)
				os.WriteFile(ep.Output, []byte(tc.operator), 0o644)
			}
			c := startCoreWith(t, coreOptions{}, ep)
			if tc.first != "" {
				wantStatus(t, c.push(`1`, tc.first), "ok")
			}
			wantStatus(t, c.push(`"two"`, `["bad"]`), tc.status)
			if tc.file == "" {
				wantNoFile(t, ep.Output)
			} else {
				wantFile(t, ep.Output, tc.file)
			}
			if got := strings.Join(readLines(t, hookRuns), " "); got != tc.runs {
				t.Errorf("hook runs %q, want %q", got, tc.runs)
			}
			if tc.first == "" {
				return
			}
			// The rolled-back bytes are what is applied: the same body again is unchanged, no hook.
			wantStatus(t, c.push(`3`, tc.first), "ok")
			if got := strings.Join(readLines(t, hookRuns), " "); got != tc.runs {
				t.Errorf("hook runs %q after the old bytes came again, want still %q", got, tc.runs)
			}
		})
	}
}

func TestHook_HangingHookIsKilledAtTheTimeoutWithItsChildren(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hook := script(t, dir, "hook.sh", `echo "$CMX_CONFIG_ID" >> "$(dirname "$0")/hook.log"
if grep -q hang "$CMX_OUTPUT"; then echo "waiting for device" >&2; sleep 60 & echo $! > "$(dirname "$0")/child.pid"; wait; fi`)
	clk := clocktest.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c := startCoreWith(t, coreOptions{Clock: clk}, config.Endpoint{Token: "gw", Hook: []string{hook},
		HookTimeout: config.Duration{Duration: time.Second}})
	wantStatus(t, c.push(`1`, `["fine"]`), "ok")
	r := c.deliver(p+"/json", 1, `{"id": 2, "entries": ["hang"]}`)
	// The hook waits for its child, which sleeps 60 s: only a kill at the timeout ends it.
	pidFile := filepath.Join(dir, "child.pid")
	var pid int
	testkit.Eventually(t, testWait, func() bool {
		b, _ := os.ReadFile(pidFile)
		var err error
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	}, "the hook did not start its child (%s)", pidFile)
	clk.Advance(999 * time.Millisecond)
	// Proves absence, so it takes real time: a kill before the timeout would land within it.
	time.Sleep(200 * time.Millisecond)
	if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err != nil || bytes.Contains(st, []byte(") Z ")) {
		t.Fatalf("the hook's child ended before the timeout (%v)", err)
	}
	clk.Advance(time.Millisecond)
	wantStatus(t, c.confirmed(p+"/json/status"), "hook failed: timed out after 1s: waiting for device; rolled back to 1")
	waitReceipt(t, r)
	wantFile(t, c.output("gw"), `["fine"]`)
	if got := strings.Join(readLines(t, filepath.Join(dir, "hook.log")), " "); got != "1 2 1" {
		t.Errorf("hook runs %q, want 1 2 1", got)
	}
	testkit.Eventually(t, testWait, func() bool {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		// Killed, not yet reaped by its (orphaned) parent's reaper.
		st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		return bytes.Contains(st, []byte(") Z "))
	}, "the hook's child %d still runs", pid)
}

func TestUnchanged_NoWriteNoValidateNoHook(t *testing.T) {
	t.Parallel()
	ep, runs := withHookLog(t)
	ep.Validate = ep.Hook // logs its runs the same way
	c := startCoreWith(t, coreOptions{}, ep)
	wantStatus(t, c.push(`1`, `["same"]`), "ok")
	var before, after syscall.Stat_t
	if err := syscall.Stat(c.output("gw"), &before); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 4; i++ {
		wantStatus(t, c.push(strconv.Itoa(i), `["same"]`), "ok")
	}
	if err := syscall.Stat(c.output("gw"), &after); err != nil {
		t.Fatal(err)
	}
	if before.Ino != after.Ino || before.Mtim != after.Mtim {
		t.Errorf("output was rewritten (inode %d → %d)", before.Ino, after.Ino)
	}
	if got := readLines(t, runs); len(got) != 2 {
		t.Errorf("validate and hook runs %q, want 2 (validate and hook of push 1 only)", got)
	}
}

func TestTemplate_RendersTheBodyAndARenderErrorRejects(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "bridge.ini.tmpl")
	os.WriteFile(tmpl, []byte("{{range .}}[{{.name}}]\nregister = {{.register}}\nscale = {{.scale}}\n{{end}}"), 0o644)
	out := filepath.Join(dir, "out", "bridge.ini")
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw", Template: tmpl, Output: out})
	wantStatus(t, c.push(`1`, `[{"name":"pump","register":40001,"scale":0.10}]`), "ok")
	const rendered = "[pump]\nregister = 40001\nscale = 0.10\n"
	wantFile(t, out, rendered)
	s := c.push(`2`, `[{"name":"fan","scale":1}]`).Status
	if !strings.HasPrefix(s, "rejected by template: template: bridge.ini.tmpl:2:") || !strings.Contains(s, `map has no entry for key "register"`) {
		t.Errorf("status = %q", s)
	}
	wantFile(t, out, rendered)
}

func TestOwnerAndMode_AreSetOnTheOutput(t *testing.T) {
	t.Parallel()
	ep := config.Endpoint{Token: "gw", Mode: 0o640}
	wantUID, wantGID := uint32(os.Geteuid()), uint32(os.Getegid())
	if os.Geteuid() == 0 {
		ep.Owner, ep.Group, wantUID, wantGID = "nobody", "65534", 65534, 65534
	}
	c := startCoreWith(t, coreOptions{}, ep)
	for _, id := range []string{"1", "2"} { // a new file, then a replacement
		wantStatus(t, c.push(id, `["`+id+`"]`), "ok")
		var st syscall.Stat_t
		if err := syscall.Stat(c.output("gw"), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != wantUID || st.Gid != wantGID || st.Mode&0o7777 != 0o640 {
			t.Errorf("push %s: uid %d gid %d mode %o, want %d %d 640", id, st.Uid, st.Gid, st.Mode&0o7777, wantUID, wantGID)
		}
	}
}

func TestOwner_UnknownUserFailsWithNothingChanged(t *testing.T) {
	t.Parallel()
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw", Owner: "no-such-user-cmx"})
	if s := c.push(`1`, `["x"]`).Status; !strings.HasPrefix(s, `write failed: owner "no-such-user-cmx": user: unknown user`) {
		t.Errorf("status = %q", s)
	}
	wantNoFile(t, c.output("gw"))
}

// mount runs mount(8) and unmounts at cleanup; the test is skipped without root.
func mount(t *testing.T, args ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a file system needs root")
	}
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		t.Skipf("mount %v: %v: %s", args, err, out)
	}
	target := args[len(args)-1]
	t.Cleanup(func() { exec.Command("umount", "-l", target).Run() })
}

// A write that the file system refuses is reported with its cause, and the file in place stays,
// with no temporary file beside it.
func TestWrite_FileSystemRefusalsAreReportedAndLeaveTheOldFile(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		setup   func(t *testing.T, out string) // out is the output's folder, holding gw.json = "old"
		entries string
		status  []string // the status starts with the first and holds the others
	}{
		{"disk full", func(t *testing.T, out string) {
			os.Remove(filepath.Join(out, "gw.json"))
			mount(t, "-t", "tmpfs", "-o", "size=64k", "tmpfs", out)
			os.WriteFile(filepath.Join(out, "gw.json"), []byte("old"), 0o644)
		}, `["` + strings.Repeat("x", 60<<10) + `"]`, []string{"write failed: disk full: ", "no space left on device"}},
		{"bind-mounted single file", func(t *testing.T, out string) {
			src := filepath.Join(t.TempDir(), "host-file")
			os.WriteFile(src, []byte("old"), 0o644)
			mount(t, "--bind", src, filepath.Join(out, "gw.json"))
		}, `["x"]`, []string{"write failed: output is busy or a mount point"}},
		{"read-only file system", func(t *testing.T, out string) {
			mount(t, "--bind", "-o", "ro", out, out)
			if err := os.WriteFile(filepath.Join(out, "probe"), nil, 0o644); err == nil {
				t.Skip("read-only bind mount is writable here")
			}
		}, `["x"]`, []string{"write failed: read-only file system: "}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			os.MkdirAll(out, 0o755)
			os.WriteFile(filepath.Join(out, "gw.json"), []byte("old"), 0o644)
			tc.setup(t, out)
			c := startCoreWith(t, coreOptions{MaxPayload: 1 << 20}, config.Endpoint{Token: "gw", Output: filepath.Join(out, "gw.json")})
			s := c.push(`1`, tc.entries).Status
			if !strings.HasPrefix(s, tc.status[0]) {
				t.Errorf("status = %q, want it to start with %q", s, tc.status[0])
			}
			for _, w := range tc.status[1:] {
				if !strings.Contains(s, w) {
					t.Errorf("status = %q, want it to hold %q", s, w)
				}
			}
			wantFile(t, filepath.Join(out, "gw.json"), "old")
			if entries, _ := os.ReadDir(out); len(entries) != 1 {
				t.Errorf("output folder holds %d entries, want only the output (no temporary file)", len(entries))
			}
		})
	}
}

// A validate program that is gone (deleted after the agent started) is the gateway's fault, not
// the configuration's: the push fails with a 5xx-kind status, which the server may retry, instead
// of being rejected as if the configuration were bad.
func TestValidate_ThatCannotStartIsAFailureNotARejection(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	validate := script(t, dir, "validate.sh", "exit 0\n")
	ep := config.Endpoint{Token: "gw", Validate: []string{validate}}
	c := startCoreWith(t, coreOptions{}, ep)
	if err := os.Remove(validate); err != nil {
		t.Fatal(err)
	}
	got := c.push(`1`, `["v1"]`)
	if want := "validate failed: cannot start: "; !strings.HasPrefix(got.Status, want) || !strings.Contains(got.Status, validate) {
		t.Errorf("status %q, want it to begin with %q and name %s", got.Status, want, validate)
	}
	if st := c.e.stateOf(c.e.endpointList()[0]); st.LastCode != store.CodeFailed {
		t.Errorf("last code %d, want %d (a failure, not a rejection)", st.LastCode, store.CodeFailed)
	}
	wantNoFile(t, c.output("gw"))
}

// A hook program that is gone is a failure too, with the new file taken back.
func TestHook_ThatCannotStartIsAFailure(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hook := script(t, dir, "hook.sh", "exit 0\n")
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw", Hook: []string{hook}})
	if err := os.Remove(hook); err != nil {
		t.Fatal(err)
	}
	got := c.push(`1`, `["v1"]`)
	if want := "hook failed: cannot start: "; !strings.HasPrefix(got.Status, want) {
		t.Errorf("status %q, want it to begin with %q", got.Status, want)
	}
	if st := c.e.stateOf(c.e.endpointList()[0]); st.LastCode != store.CodeFailed {
		t.Errorf("last code %d, want %d", st.LastCode, store.CodeFailed)
	}
	wantNoFile(t, c.output("gw"))
}
