package engine

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/apply"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/store"
)

// What sits at an output path is not trusted (CONTRACT.md section 4): these tests plant what anyone
// with write access to the output's folder could put there.

// plant puts a thing of the given kind at path: "FIFO", "socket", "device" (a node for /dev/null)
// or "symbolic link" (to target). A FIFO gets a cleanup that opens it for writing, which releases
// a reader blocked on it, so that a test of code that blocks there fails instead of hanging.
func plant(t *testing.T, path, kind, target string) {
	t.Helper()
	var err error
	switch kind {
	case "FIFO":
		err = syscall.Mkfifo(path, 0o644)
		releaseFIFO(t, path)
	case "socket":
		err = syscall.Mknod(path, syscall.S_IFSOCK|0o644, 0)
	case "device":
		err = syscall.Mknod(path, syscall.S_IFCHR|0o644, 1<<8|3)
	case "symbolic link":
		err = os.Symlink(target, path)
	default:
		t.Fatalf("plant: unknown kind %q", kind)
	}
	if errors.Is(err, syscall.EPERM) {
		t.Skipf("cannot make a %s here: %v", kind, err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// releaseFIFO opens the FIFO at path for writing at cleanup, if someone is blocked reading it then.
func releaseFIFO(t *testing.T, path string) {
	t.Cleanup(func() {
		// Non-blocking: this fails at once (ENXIO) when nobody is blocked reading.
		if fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			syscall.Close(fd)
		}
	})
}

// typeOf is the file type at path, not following a link.
func typeOf(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Type()
}

// secretFile makes a root-only file outside the outputs' folders, as /etc/shadow would be.
func secretFile(t *testing.T) (path, content string) {
	t.Helper()
	path, content = filepath.Join(t.TempDir(), "shadow"), "root:$6$secret-hash:19000::::::"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, content
}

// waitRegular waits until path is a regular file holding want, reading nothing else: the test must
// not block on a FIFO either.
func (c *core) waitRegular(path, want string) {
	c.t.Helper()
	var (
		b   []byte
		err error
	)
	testkit.Eventually(c.t, testWait, func() bool {
		b, _, err = apply.ReadRegular(path, int64(len(want)))
		return err == nil && string(b) == want
	}, "%s = %q (%v), want a regular file holding %q", path, func() string { return string(b) }, func() string { return fmt.Sprint(err) }, want)
}

func TestFirstApply_LinkAtTheOutputIsNeitherFollowedNorCopied(t *testing.T) {
	t.Parallel()
	secret, content := secretFile(t)
	ep, hookRuns := withHookLog(t)
	ep.Output = filepath.Join(t.TempDir(), "out", "gw.json")
	os.MkdirAll(filepath.Dir(ep.Output), 0o755)
	plant(t, ep.Output, "symbolic link", secret)
	c := startCoreWith(t, coreOptions{}, ep)

	s := c.push(`1`, `["bad"]`).Status // the hook fails on it: a rollback would put "what was there" back
	if want := "write failed: " + ep.Output + " is a symbolic link, not a regular file; left as it is"; s != want {
		t.Errorf("status = %q, want %q", s, want)
	}
	if got, err := os.Readlink(ep.Output); err != nil || got != secret {
		t.Errorf("output is %v (link to %q, %v), want still the link to %s", typeOf(t, ep.Output), got, err, secret)
	}
	if got := readLines(t, hookRuns); len(got) != 0 {
		t.Errorf("hook runs %q, want none: nothing was written", got)
	}
	if entries, _ := os.ReadDir(filepath.Dir(ep.Output)); len(entries) != 1 {
		t.Errorf("output folder holds %d entries, want only the link", len(entries))
	}
	db, err := os.ReadFile(filepath.Join(c.cfg.Agent.StateDir, store.DBName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte(content)) || bytes.Contains(db, []byte(base64.StdEncoding.EncodeToString([]byte(content)))) {
		t.Errorf("the link's target was copied into the state database")
	}
}

func TestFirstApply_FailedHookPutsTheAppsFileBackWithItsOwnModeAndOwner(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("giving the app's file another owner needs root")
	}
	cases := []struct {
		name string
		ep   config.Endpoint // what the agent's own file would get
		mode fs.FileMode     // the app's file's
	}{
		{"EndpointWithoutModeOrOwner", config.Endpoint{}, 0o600},
		{"EndpointWithAnotherModeAndOwner", config.Endpoint{Mode: 0o644, Owner: "0", Group: "0"}, 0o600},
		// chown(2) clears setuid and setgid: they must be set again after it.
		{"SetuidAndSetgidBitsToo", config.Endpoint{}, 0o750 | fs.ModeSetuid | fs.ModeSetgid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ep, _ := withHookLog(t)
			ep.Mode, ep.Owner, ep.Group = tc.ep.Mode, tc.ep.Owner, tc.ep.Group
			ep.Output = filepath.Join(t.TempDir(), "out", "gw.json")
			os.MkdirAll(filepath.Dir(ep.Output), 0o755)
			if err := os.WriteFile(ep.Output, []byte("app's own"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(ep.Output, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(ep.Output, tc.mode); err != nil {
				t.Fatal(err)
			}
			c := startCoreWith(t, coreOptions{}, ep)
			wantStatus(t, c.push(`1`, `["bad"]`), "hook failed: exit 7: reload failed: bad value; rolled back to the previous file")
			wantFile(t, ep.Output, "app's own")
			fi, err := os.Lstat(ep.Output)
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != tc.mode || st.Uid != 65534 || st.Gid != 65534 {
				t.Errorf("after the rollback: %v uid %d gid %d, want the app's %v 65534 65534", fi.Mode(), st.Uid, st.Gid, tc.mode)
			}
		})
	}
}

// A prior file recorded by an earlier version has no mode or owner: the endpoint's are used, as
// they were then.
func TestFirstApply_PriorRecordedWithoutModeAndOwnerComesBackWithTheEndpointsMode(t *testing.T) {
	t.Parallel()
	ep, _ := withHookLog(t)
	ep.Mode = 0o640
	c := startCoreWith(t, coreOptions{}, ep)
	err := c.e.store.Update(func(tx *store.Tx) error {
		// Without Attr, it is stored as an earlier version wrote it: {"exists":true,"body":"…"}.
		return tx.SetPrior("gw", store.PriorFile{Exists: true, Body: []byte("operator's file")})
	})
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, c.push(`1`, `["bad"]`), "hook failed: exit 7: reload failed: bad value; rolled back to the previous file")
	wantFile(t, c.output("gw"), "operator's file")
	if fi, err := os.Lstat(c.output("gw")); err != nil || fi.Mode() != 0o640 {
		t.Errorf("mode after the rollback = %v (%v), want the endpoint's -rw-r-----", fi.Mode(), err)
	}
}

// A FIFO at one endpoint's output used to block its apply (and the agent's stop) for good; a socket
// or device is no file to keep either. The other endpoint goes on regardless.
func TestFirstApply_NonRegularFileAtTheOutputGetsAnErrorStatusAndStallsNothing(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"FIFO", "socket", "device"} {
		t.Run(kind, func(t *testing.T) {
			c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw"}, config.Endpoint{Token: "gw2"})
			out := c.output("gw")
			os.MkdirAll(filepath.Dir(out), 0o755)
			plant(t, out, kind, "")
			before := typeOf(t, out)

			c.deliver(p+"/json", 1, `{"id":1,"entries":["one"]}`)
			c.deliver("kp1/app/cmx/gw2/json", 1, `{"id":2,"entries":["two"]}`)
			got := c.confirmations(2)
			if s := got[p+"/json/status"]; !strings.Contains(s, `"write failed: `+out+` is a `+kind+`, not a regular file; left as it is"`) {
				t.Errorf("gw's confirmation = %s, want a write failure naming the %s", s, kind)
			}
			if s := got["kp1/app/cmx/gw2/json/status"]; s != `{"id":2,"status":"ok"}` {
				t.Errorf("gw2's confirmation = %s, want ok", s)
			}
			wantFile(t, c.output("gw2"), `["two"]`)
			if after := typeOf(t, out); after != before {
				t.Errorf("gw's output is now %v, want the %s left as it was", after, kind)
			}
			stopped := make(chan struct{})
			go func() { c.stop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				t.Fatalf("engine still running 5s after it was told to stop")
			}
		})
	}
}

// The first apply keeps what it finds at the output in memory and in the database, for a rollback;
// a file larger than any configuration the agent takes (max_payload) is refused and left alone.
func TestFirstApply_FileOverMaxPayloadAtTheOutputIsRefusedAndLeftAsItIs(t *testing.T) {
	t.Parallel()
	const maxPayload = 1 << 16
	for _, tc := range []struct {
		name   string
		size   int
		status string // %s: the output
	}{
		{"AtMaxPayloadItIsKeptAndReplaced", maxPayload, "ok"},
		{"OneByteOverItIsRefused", maxPayload + 1, "write failed: %s holds more than 65536 bytes (max_payload), too large to keep for a rollback; left as it is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := config.Endpoint{Token: "gw", Output: filepath.Join(t.TempDir(), "out", "gw.json")}
			os.MkdirAll(filepath.Dir(ep.Output), 0o755)
			big := strings.Repeat("o", tc.size)
			os.WriteFile(ep.Output, []byte(big), 0o644)
			c := startCoreWith(t, coreOptions{MaxPayload: maxPayload}, ep)
			want, file := tc.status, `["new"]`
			if strings.Contains(want, "%s") {
				want, file = strings.Replace(want, "%s", ep.Output, 1), big
			}
			wantStatus(t, c.push(`1`, `["new"]`), want)
			if b, err := os.ReadFile(ep.Output); string(b) != file { // not printed: 64 KiB
				t.Errorf("output holds %d bytes (%v), want %d", len(b), err, len(file))
			}
		})
	}
}

// Anything but the agent's regular file at the output is drift; the repair renames the applied
// bytes over it, which never follows a link, and the check never waits on a FIFO.
func TestDrift_NonRegularFileAtTheOutputIsRepairedWithoutBlocking(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{"FIFO", "symbolic link", "socket", "device"} {
		t.Run(kind, func(t *testing.T) {
			secret, content := secretFile(t)
			c := startCoreWith(t, coreOptions{Clock: warp(t)}, config.Endpoint{Token: "gw"})
			wantStatus(t, c.push(`1`, `["applied"]`), "ok")
			out := c.output("gw")
			// Made beside the output and renamed over it, as anyone who may write the folder can.
			planted := filepath.Join(filepath.Dir(out), "planted")
			plant(t, planted, kind, secret)
			if err := os.Rename(planted, out); err != nil {
				t.Fatal(err)
			}
			if kind == "FIFO" {
				releaseFIFO(t, out)
			}
			c.waitRegular(out, `["applied"]`)
			c.waitLog(`msg="output changed locally; repaired" endpoint=gw output=`+out+` change="replaced by a `+kind+`"`, 1)
			if b, err := os.ReadFile(secret); err != nil || string(b) != content {
				t.Errorf("the link's target = %q (%v), want it untouched", b, err)
			}
			// The repair went through the endpoint's worker: a push after it is still applied.
			wantStatus(t, c.push(`2`, `["next"]`), "ok")
			c.waitRegular(out, `["next"]`)
		})
	}
}

// A folder cannot be renamed over: the drift is logged as not repairable, the folder stays, and the
// endpoint goes on (a push then fails the same way).
func TestDrift_FolderAtTheOutputIsLoggedAsNotRepairable(t *testing.T) {
	t.Parallel()
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw"})
	wantStatus(t, c.push(`1`, `["applied"]`), "ok")
	out := c.output("gw")
	if err := os.Remove(out); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	c.waitLog(`msg="output changed locally and cannot be repaired" endpoint=gw change="replaced by a directory"`, 1)
	if typeOf(t, out) != fs.ModeDir {
		t.Errorf("output is %v, want the folder left", typeOf(t, out))
	}
	if s := c.push(`2`, `["next"]`).Status; !strings.HasPrefix(s, "write failed: ") || !strings.Contains(s, "rename ") {
		t.Errorf("status = %q, want the rename's failure", s)
	}
}

// The file found at the first apply is recorded once; until the agent's first write succeeds the
// output is still not its own, and what is there then is checked again (without being read).
func TestFirstApply_AfterAPriorWasRecordedANonRegularFileIsStillRefused(t *testing.T) {
	t.Parallel()
	ep, hookRuns := withHookLog(t)
	ep.Validate = []string{script(t, t.TempDir(), "validate.sh", `grep -q good "$CMX_CANDIDATE"`)}
	ep.Output = filepath.Join(t.TempDir(), "out", "gw.json")
	os.MkdirAll(filepath.Dir(ep.Output), 0o755)
	os.WriteFile(ep.Output, []byte("operator's"), 0o644)
	c := startCoreWith(t, coreOptions{}, ep)
	// Refused by validate: the operator's file is recorded for a rollback, nothing is written.
	wantStatus(t, c.push(`1`, `["evil"]`), "rejected by validate: exit 1")
	if err := os.Remove(ep.Output); err != nil {
		t.Fatal(err)
	}
	plant(t, ep.Output, "FIFO", "")
	s := c.push(`2`, `["good"]`).Status
	if want := "write failed: " + ep.Output + " is a FIFO, not a regular file; left as it is"; s != want {
		t.Errorf("status = %q, want %q", s, want)
	}
	if typeOf(t, ep.Output) != fs.ModeNamedPipe {
		t.Errorf("output is %v, want the FIFO left", typeOf(t, ep.Output))
	}
	if got := readLines(t, hookRuns); len(got) != 0 {
		t.Errorf("hook runs %q, want none", got)
	}
}

// The file recorded at an attempt that wrote nothing (validate refused it) is not the rollback copy
// of a file the app wrote at the output since: a failed hook later puts back what was there at the
// agent's first write, not an older version of it.
func TestFirstApply_AFileChangedAfterARefusedAttemptIsWhatARollbackPutsBack(t *testing.T) {
	t.Parallel()
	ep, _ := withHookLog(t)
	ep.Validate = []string{script(t, t.TempDir(), "validate.sh", `! grep -q evil "$CMX_CANDIDATE"`)}
	ep.Output = filepath.Join(t.TempDir(), "out", "gw.json")
	os.MkdirAll(filepath.Dir(ep.Output), 0o755)
	os.WriteFile(ep.Output, []byte("operator's v1"), 0o644)
	c := startCoreWith(t, coreOptions{}, ep)
	wantStatus(t, c.push(`1`, `["evil"]`), "rejected by validate: exit 1")
	wantFile(t, ep.Output, "operator's v1")
	if err := os.WriteFile(ep.Output, []byte("operator's v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, c.push(`2`, `["bad"]`), "hook failed: exit 7: reload failed: bad value; rolled back to the previous file")
	wantFile(t, ep.Output, "operator's v2")
}
