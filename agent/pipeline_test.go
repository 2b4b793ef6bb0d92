package agent

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
)

// newPipelineHarness is a harness with one endpoint gw-001 whose [[endpoint]] table gets the extra
// TOML lines opts (with {dir} replaced by the test's folder); output is out/gw-001.json unless opts
// sets it.
// setup runs before the configuration is parsed (which checks that a template exists).
func newPipelineHarness(t *testing.T, opts string, setup ...func(dir string)) *harness {
	t.Helper()
	h := newHarness(t)
	for _, f := range setup {
		f(h.dir)
	}
	opts = strings.ReplaceAll(opts, "{dir}", h.dir)
	if !strings.Contains(opts, "output =") {
		opts = "output = \"out/gw-001.json\"\n" + opts
	}
	src := fmt.Sprintf("[broker]\nservers = [%q]\nkeepalive = \"5s\"\nreconnect_spread = \"0s\"\n[kaa]\napp_version = %q\n[agent]\nstate_dir = \"state\"\nsocket = \"state/agent.sock\"\n"+
		"[[endpoint]]\ntoken = \"gw-001\"\n%s\n", h.broker.URL, app, opts)
	cfg, err := config.Parse(filepath.Join(h.dir, "agent.toml"), []byte(src))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	h.cfg = cfg
	return h
}

// script writes an executable shell script into the test folder and returns its path.
func (h *harness) script(name, body string) string {
	h.t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		h.t.Fatal(err)
	}
	return p
}

// push publishes a cmx3 push for gw-001 and returns the status of its confirmation.
func (h *harness) push(id, entries string) string {
	h.t.Helper()
	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(h.t, topic, 1, []byte(fmt.Sprintf(`{"id":%s,"entries":%s}`, id, entries)))
	for {
		_, c := h.confirmed(topic + "/status")
		if string(c["id"]) == id {
			return status(h.t, c)
		}
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// hookLog is a hook that records "<config id>=<output bytes>" per run and fails (exit 7) on outputs
// holding "bad".
const hookLog = `echo "$CMX_CONFIG_ID=$(cat "$CMX_OUTPUT")" >> "$(dirname "$0")/hook.log"
if grep -q bad "$CMX_OUTPUT"; then echo "reload failed: bad value" >&2; echo "more detail" >&2; exit 7; fi
`

func TestHook_RunsAfterTheFileIsInPlaceWithItsEnvironment(t *testing.T) {
	h := newPipelineHarness(t, `hook = ["{dir}/hook.sh"]`)
	h.script("hook.sh", `echo "$CMX_TOKEN $CMX_CONFIG_ID $CMX_OUTPUT ${CMX_CANDIDATE-none} $(cat "$CMX_OUTPUT")" > "$(dirname "$0")/hook.log"`)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`"cfg 1"`, `["v1"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	got, _ := os.ReadFile(filepath.Join(h.dir, "hook.log"))
	want := fmt.Sprintf("gw-001 cfg 1 %s none [\"v1\"]\n", h.output("gw-001"))
	if string(got) != want {
		t.Errorf("hook saw %q, want %q", got, want)
	}
}

func TestValidate_RejectsAndChangesNothing(t *testing.T) {
	h := newPipelineHarness(t, `validate = ["{dir}/validate.sh"]
hook = ["{dir}/hook.sh"]`)
	h.script("validate.sh", `
[ "$CMX_OUTPUT" = "$(dirname "$0")/out/gw-001.json" ] || { echo "wrong CMX_OUTPUT $CMX_OUTPUT" >&2; exit 9; }
[ "$CMX_CANDIDATE" != "$CMX_OUTPUT" ] || { echo "candidate is the output" >&2; exit 9; }
grep -q good "$CMX_CANDIDATE" || { echo "no good in $CMX_CONFIG_ID" >&2; exit 4; }`)
	h.script("hook.sh", hookLog)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["good"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	if s := h.push(`2`, `["evil"]`); s != "rejected by validate: exit 4: no good in 2" {
		t.Errorf("status = %q", s)
	}
	h.waitFile(h.output("gw-001"), []byte(`["good"]`))
	if got := readLines(t, filepath.Join(h.dir, "hook.log")); len(got) != 1 || got[0] != `1=["good"]` {
		t.Errorf("hook runs %q, want only the one for push 1", got)
	}
	entries, _ := os.ReadDir(filepath.Join(h.dir, "out"))
	if len(entries) != 1 {
		t.Errorf("output folder holds %d entries, want only the output", len(entries))
	}
}

func TestHook_FailureRollsBackAndRunsTheHookForTheOldBytes(t *testing.T) {
	h := newPipelineHarness(t, `hook = ["{dir}/hook.sh"]`)
	h.script("hook.sh", hookLog)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["good"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	if s := h.push(`"two"`, `["bad"]`); s != "hook failed: exit 7: reload failed: bad value; rolled back to 1" {
		t.Errorf("status = %q", s)
	}
	h.waitFile(h.output("gw-001"), []byte(`["good"]`))
	want := []string{`1=["good"]`, `two=["bad"]`, `1=["good"]`}
	if got := readLines(t, filepath.Join(h.dir, "hook.log")); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("hook runs %q, want %q", got, want)
	}
	// The rolled-back bytes are what is applied: the same good body again is unchanged, no hook.
	if s := h.push(`3`, `["good"]`); s != "ok" {
		t.Errorf("status = %q", s)
	}
	if got := readLines(t, filepath.Join(h.dir, "hook.log")); len(got) != 3 {
		t.Errorf("hook ran again for unchanged bytes: %q", got)
	}
}

func TestHook_FailureWithNoPreviousFileRemovesTheOutput(t *testing.T) {
	h := newPipelineHarness(t, `hook = ["{dir}/hook.sh"]`)
	h.script("hook.sh", hookLog)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["bad"]`); s != "hook failed: exit 7: reload failed: bad value; output removed (there was no previous file)" {
		t.Errorf("status = %q", s)
	}
	if _, err := os.Lstat(h.output("gw-001")); !os.IsNotExist(err) {
		t.Errorf("output exists (%v), want it removed", err)
	}
	if got := readLines(t, filepath.Join(h.dir, "hook.log")); len(got) != 1 {
		t.Errorf("hook runs %q, want one (not re-run without a previous file)", got)
	}
}

func TestHook_FailureOnFirstApplyPutsTheOperatorsFileBack(t *testing.T) {
	h := newPipelineHarness(t, `hook = ["{dir}/hook.sh"]`)
	h.script("hook.sh", hookLog)
	os.MkdirAll(filepath.Join(h.dir, "out"), 0o755)
	os.WriteFile(h.output("gw-001"), []byte("hand-made"), 0o644)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["bad"]`); s != "hook failed: exit 7: reload failed: bad value; rolled back to the previous file" {
		t.Errorf("status = %q", s)
	}
	h.waitFile(h.output("gw-001"), []byte("hand-made"))
}

func TestHook_HangingHookIsKilledAtTheTimeoutWithItsChildren(t *testing.T) {
	h := newPipelineHarness(t, `hook = ["{dir}/hook.sh"]
hook_timeout = "2s"`)
	h.script("hook.sh", `echo "$CMX_CONFIG_ID" >> "$(dirname "$0")/hook.log"
if grep -q hang "$CMX_OUTPUT"; then echo "waiting for device" >&2; sleep 60 & echo $! > "$(dirname "$0")/child.pid"; wait; fi`)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["fine"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	start := time.Now()
	if s := h.push(`2`, `["hang"]`); s != "hook failed: timed out after 2s: waiting for device; rolled back to 1" {
		t.Errorf("status = %q", s)
	}
	// Not a timing assertion: the hook's child sleeps 60 s, so an answer well before that shows the
	// group was killed at the timeout rather than waited for.
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("confirmation took %v: the hook was waited for, not killed", took)
	}
	h.waitFile(h.output("gw-001"), []byte(`["fine"]`))
	if got := readLines(t, filepath.Join(h.dir, "hook.log")); strings.Join(got, " ") != "1 2 1" {
		t.Errorf("hook runs %q, want 1 2 1", got)
	}
	b, _ := os.ReadFile(filepath.Join(h.dir, "child.pid"))
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("child pid %q", b)
	}
	deadline := time.Now().Add(2 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); bytes.Contains(st, []byte(") Z ")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hook's child %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUnchanged_NoWriteNoValidateNoHook(t *testing.T) {
	h := newPipelineHarness(t, `validate = ["{dir}/hook.sh"]
hook = ["{dir}/hook.sh"]`)
	h.script("hook.sh", hookLog)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["same"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	var before syscall.Stat_t
	syscall.Stat(h.output("gw-001"), &before)
	for i := 2; i <= 4; i++ {
		if s := h.push(strconv.Itoa(i), `["same"]`); s != "ok" {
			t.Errorf("status = %q", s)
		}
	}
	var after syscall.Stat_t
	syscall.Stat(h.output("gw-001"), &after)
	if before.Ino != after.Ino {
		t.Errorf("output was rewritten (inode %d → %d)", before.Ino, after.Ino)
	}
	if got := readLines(t, filepath.Join(h.dir, "hook.log")); len(got) != 2 {
		t.Errorf("validate and hook runs %q, want 2 (validate and hook of push 1 only)", got)
	}
}

func TestTemplate_RendersTheBodyAndARenderErrorRejects(t *testing.T) {
	h := newPipelineHarness(t, `template = "bridge.ini.tmpl"
output = "out/bridge.ini"`, func(dir string) {
		os.WriteFile(filepath.Join(dir, "bridge.ini.tmpl"), []byte("{{range .}}[{{.name}}]\nregister = {{.register}}\nscale = {{.scale}}\n{{end}}"), 0o644)
	})
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `[{"name":"pump","register":40001,"scale":0.10}]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	out := filepath.Join(h.dir, "out", "bridge.ini")
	h.waitFile(out, []byte("[pump]\nregister = 40001\nscale = 0.10\n"))
	s := h.push(`2`, `[{"name":"fan","scale":1}]`)
	if !strings.HasPrefix(s, "rejected by template: template: bridge.ini.tmpl:2:") || !strings.Contains(s, `map has no entry for key "register"`) {
		t.Errorf("status = %q", s)
	}
	h.waitFile(out, []byte("[pump]\nregister = 40001\nscale = 0.10\n"))
}

func TestOwnerAndMode_AreSetOnTheOutput(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("setting another owner needs root")
	}
	h := newPipelineHarness(t, `mode = "0640"
owner = "nobody"
group = "65534"`)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["x"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(h.output("gw-001"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 65534 || st.Gid != 65534 || st.Mode&0o7777 != 0o640 {
		t.Errorf("uid %d gid %d mode %o, want 65534 65534 640", st.Uid, st.Gid, st.Mode&0o7777)
	}
}

func TestOwner_UnknownUserFailsWithNothingChanged(t *testing.T) {
	h := newPipelineHarness(t, `owner = "no-such-user-cmx"`)
	h.start()
	h.pulled("gw-001")
	s := h.push(`1`, `["x"]`)
	if !strings.HasPrefix(s, `write failed: owner "no-such-user-cmx": user: unknown user`) {
		t.Errorf("status = %q", s)
	}
	if _, err := os.Lstat(h.output("gw-001")); !os.IsNotExist(err) {
		t.Errorf("output exists: %v", err)
	}
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

func TestWrite_DiskFullIsReportedAndLeavesTheOldFile(t *testing.T) {
	h := newPipelineHarness(t, "")
	out := filepath.Join(h.dir, "out")
	os.MkdirAll(out, 0o755)
	mount(t, "-t", "tmpfs", "-o", "size=64k", "tmpfs", out)
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["small"]`); s != "ok" {
		t.Fatalf("status = %q", s)
	}
	big := `["` + strings.Repeat("x", 60<<10) + `"]`
	s := h.push(`2`, big)
	if !strings.HasPrefix(s, "write failed: disk full: ") || !strings.Contains(s, "no space left on device") {
		t.Errorf("status = %q", s)
	}
	h.waitFile(h.output("gw-001"), []byte(`["small"]`))
	entries, _ := os.ReadDir(out)
	if len(entries) != 1 {
		t.Errorf("output folder holds %d entries, want only the output (no temporary file)", len(entries))
	}
}

func TestWrite_BindMountedSingleFileIsReported(t *testing.T) {
	h := newPipelineHarness(t, "")
	os.MkdirAll(filepath.Join(h.dir, "out"), 0o755)
	src := filepath.Join(h.dir, "host-file")
	os.WriteFile(src, []byte("host"), 0o644)
	os.WriteFile(h.output("gw-001"), []byte("old"), 0o644)
	mount(t, "--bind", src, h.output("gw-001"))
	h.start()
	h.pulled("gw-001")
	s := h.push(`1`, `["x"]`)
	if !strings.HasPrefix(s, "write failed: output is busy or a mount point") {
		t.Errorf("status = %q", s)
	}
	h.waitFile(h.output("gw-001"), []byte("host"))
	entries, _ := os.ReadDir(filepath.Join(h.dir, "out"))
	if len(entries) != 1 {
		t.Errorf("output folder holds %d entries, want only the output", len(entries))
	}
}

func TestWrite_ReadOnlyFileSystemIsReported(t *testing.T) {
	h := newPipelineHarness(t, "")
	out := filepath.Join(h.dir, "out")
	os.MkdirAll(out, 0o755)
	os.WriteFile(h.output("gw-001"), []byte("old"), 0o644)
	mount(t, "--bind", "-o", "ro", out, out)
	if err := os.WriteFile(filepath.Join(out, "probe"), nil, 0o644); err == nil {
		t.Skip("read-only bind mount is writable here")
	}
	h.start()
	h.pulled("gw-001")
	if s := h.push(`1`, `["x"]`); !strings.HasPrefix(s, "write failed: read-only file system: ") {
		t.Errorf("status = %q", s)
	}
	h.waitFile(h.output("gw-001"), []byte("old"))
}
