package apply

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Several tests change process-wide state (umask, RLIMIT_FSIZE, the working folder), so no test in
// this package runs in parallel.

func TestWriteFile_CreatesFileWithBytesAndMode(t *testing.T) {
	tests := []struct {
		name     string
		umask    int
		perm     fs.FileMode
		data     []byte
		wantMode fs.FileMode
	}{
		{"default mode under umask 0077", 0o077, 0, []byte(`{"a":1}`), 0o644},
		{"default mode under umask 0", 0, 0, []byte(`{"a":1}`), 0o644},
		{"0640 under umask 0077", 0o077, 0o640, []byte(`[1,2,3]`), 0o640},
		{"0600 under umask 0 is not widened", 0, 0o600, []byte(`[]`), 0o600},
		{"0755 under umask 0077", 0o077, 0o755, []byte("#!/bin/sh\n"), 0o755},
		{"read-only mode still gets its bytes", 0o022, 0o444, []byte("frozen"), 0o444},
		{"empty body", 0o077, 0, []byte{}, 0o644},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setUmask(t, tt.umask)
			dir := t.TempDir()
			path := filepath.Join(dir, "out.json")

			if err := WriteFile(path, tt.data, Options{Perm: tt.perm}); err != nil {
				t.Fatalf("WriteFile: %v", err)
			}
			if got := readFile(t, path); !bytes.Equal(got, tt.data) {
				t.Errorf("bytes = %q, want %q", got, tt.data)
			}
			if got := fileMode(t, path); got != tt.wantMode {
				t.Errorf("mode = %v, want %v", got, tt.wantMode)
			}
			assertNames(t, dir, "out.json")
		})
	}
}

func TestWriteFile_ReplacesExistingFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.json")
	// Longer than the new body and with another mode: a replacement must not keep either.
	if err := os.WriteFile(path, []byte(`{"old":"a much longer body than the new one"}`), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := WriteFile(path, []byte(`{"new":1}`), Options{Perm: 0o640}); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	if got, want := readFile(t, path), []byte(`{"new":1}`); !bytes.Equal(got, want) {
		t.Errorf("bytes = %q, want %q", got, want)
	}
	if got := fileMode(t, path); got != 0o640 {
		t.Errorf("mode = %v, want 0640", got)
	}
	assertNames(t, dir, "out.json")
}

func TestWriteFile_OpenReaderKeepsOldBytes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.json")
	oldData, newData := []byte("old version"), []byte("new version, longer")
	if err := WriteFile(path, oldData, Options{}); err != nil {
		t.Fatal(err)
	}
	reader, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()

	if err := WriteFile(path, newData, Options{}); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	if got, err := io.ReadAll(reader); err != nil || !bytes.Equal(got, oldData) {
		t.Errorf("reader opened before the replacement read %q, %v; want %q", got, err, oldData)
	}
	if got := readFile(t, path); !bytes.Equal(got, newData) {
		t.Errorf("the name now reads %q, want %q", got, newData)
	}
}

func TestWriteFile_ConcurrentReaderSeesOnlyWholeVersions(t *testing.T) {
	const replacements = 200
	dir := t.TempDir()
	path := filepath.Join(dir, "out.json")
	// Each version starts with its index and has its own size and filler, so a truncated, partial
	// or mixed read cannot equal any version.
	versions := make([][]byte, replacements+1)
	for i := range versions {
		filler := bytes.Repeat([]byte{byte('a' + i%26)}, 4096+(i*7919)%61440)
		versions[i] = append([]byte(fmt.Sprintf("%03d|", i)), filler...)
	}
	if err := WriteFile(path, versions[0], Options{}); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	started := make(chan struct{})
	readerDone := make(chan struct{})
	var reads, distinct atomic.Int64
	var bad atomic.Pointer[string] // the first bad read
	go func() {
		defer close(readerDone)
		last := -1
		for first := true; ; first = false {
			select {
			case <-stop:
				return
			default:
			}
			got, err := os.ReadFile(path)
			if i := versionIndex(got); err != nil || i < 0 || !bytes.Equal(got, versions[i]) {
				msg := fmt.Sprintf("read %d bytes starting %q, error %v", len(got), head(got), err)
				bad.CompareAndSwap(nil, &msg)
			} else if i != last {
				last = i
				distinct.Add(1)
			}
			reads.Add(1)
			if first {
				close(started)
			}
		}
	}()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("reader did not start within 10s")
	}

	for i := 1; i <= replacements; i++ {
		if err := WriteFile(path, versions[i], Options{}); err != nil {
			close(stop)
			<-readerDone
			t.Fatalf("replacement %d: %v", i, err)
		}
	}
	close(stop)
	<-readerDone

	if b := bad.Load(); b != nil {
		t.Errorf("reader saw a file that is none of the written versions: %s", *b)
	}
	if got := readFile(t, path); !bytes.Equal(got, versions[replacements]) {
		t.Errorf("final file is %q..., want version %d", head(got), replacements)
	}
	assertNames(t, dir, "out.json")
	t.Logf("%d reads, %d changes of version seen", reads.Load(), distinct.Load())
}

func TestWriteFile_CreatesMissingParents(t *testing.T) {
	setUmask(t, 0o077)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "a", "b", "c", "out.json")

	if err := WriteFile(path, []byte("x"), Options{}); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	if got := readFile(t, path); string(got) != "x" {
		t.Errorf("bytes = %q, want %q", got, "x")
	}
	for _, rel := range []string{"a", "a/b", "a/b/c"} {
		if got := fileMode(t, filepath.Join(dir, rel)); got != fs.ModeDir|0o755 {
			t.Errorf("created folder %s has mode %v, want drwxr-xr-x whatever the umask", rel, got)
		}
	}
	if got := fileMode(t, dir); got != fs.ModeDir|0o700 {
		t.Errorf("existing folder changed to %v, want it left at drwx------", got)
	}
}

func TestWriteFile_RelativePath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)

	for _, rel := range []string{"out.json", "sub/out.json"} {
		if err := WriteFile(rel, []byte(rel), Options{}); err != nil {
			t.Fatalf("WriteFile(%q): %v", rel, err)
		}
		if got := readFile(t, filepath.Join(dir, rel)); string(got) != rel {
			t.Errorf("%s holds %q, want %q", rel, got, rel)
		}
	}
	leaveTemp(t, "out.json", []byte("stray"))
	if n, err := RemoveTemps("out.json"); n != 1 || err != nil {
		t.Errorf("RemoveTemps(out.json) = %d, %v; want 1, nil", n, err)
	}
	assertNames(t, dir, "out.json", "sub")
}

func TestWriteFile_StepsSeeTheFileStateInOrder(t *testing.T) {
	tests := []struct {
		name    string
		oldData []byte // nil: no file before
	}{
		{"replacing a file", []byte("old")},
		{"creating a file", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out.json")
			if tt.oldData != nil {
				if err := WriteFile(path, tt.oldData, Options{}); err != nil {
					t.Fatal(err)
				}
			}
			newData := []byte("new")
			var steps []string

			err := WriteFile(path, newData, Options{Perm: 0o640, Step: func(step string) {
				steps = append(steps, step)
				switch step {
				case StepSynced:
					got, err := os.ReadFile(path)
					if tt.oldData == nil && !errors.Is(err, fs.ErrNotExist) {
						t.Errorf("at %s the target exists (%q, %v), want it missing", step, got, err)
					}
					if tt.oldData != nil && !bytes.Equal(got, tt.oldData) {
						t.Errorf("at %s the target holds %q, %v; want the old %q", step, got, err, tt.oldData)
					}
					temps := namesExcept(t, dir, "out.json")
					if len(temps) != 1 || !strings.HasPrefix(temps[0], ".") {
						t.Fatalf("at %s the folder holds %q besides the target, want one hidden temporary file", step, temps)
					}
					tmp := filepath.Join(dir, temps[0])
					if got := readFile(t, tmp); !bytes.Equal(got, newData) {
						t.Errorf("at %s the temporary file holds %q, want %q", step, got, newData)
					}
					if got := fileMode(t, tmp); got != 0o640 {
						t.Errorf("at %s the temporary file has mode %v, want the final 0640", step, got)
					}
				case StepRenamed:
					if got := readFile(t, path); !bytes.Equal(got, newData) {
						t.Errorf("at %s the target holds %q, want %q", step, got, newData)
					}
					assertNames(t, dir, "out.json")
				}
			}})
			if err != nil {
				t.Fatalf("WriteFile: %v", err)
			}
			if want := []string{StepSynced, StepRenamed}; !slices.Equal(steps, want) {
				t.Errorf("steps = %q, want %q", steps, want)
			}
		})
	}
}

func TestWriteFile_LongFileName(t *testing.T) {
	dir := t.TempDir()
	// 255 bytes, the longest name Linux allows, and a sibling with the same first 250 bytes.
	long := strings.Repeat("n", 250) + ".json"
	sibling := strings.Repeat("n", 250) + ".yaml"
	for _, name := range []string{long, sibling} {
		path := filepath.Join(dir, name)
		if err := WriteFile(path, []byte(name[250:]), Options{}); err != nil {
			t.Fatalf("WriteFile(%d-byte name): %v", len(name), err)
		}
		if got := readFile(t, path); string(got) != name[250:] {
			t.Errorf("%s... holds %q", name[245:], got)
		}
	}
	leaveTemp(t, filepath.Join(dir, long), []byte("stray"))
	siblingTemp := leaveTemp(t, filepath.Join(dir, sibling), []byte("stray"))

	if n, err := RemoveTemps(filepath.Join(dir, long)); n != 1 || err != nil {
		t.Errorf("RemoveTemps = %d, %v; want 1, nil", n, err)
	}
	assertNames(t, dir, long, sibling, siblingTemp)
}

func TestWriteFile_RejectsBadArguments(t *testing.T) {
	tests := []struct {
		name string
		path string // relative to a fresh folder
		perm fs.FileMode
	}{
		{"path ends in a slash", "out/", 0},
		{"path is the folder itself", ".", 0},
		{"path ends in ..", "sub/..", 0},
		{"mode with a type bit", "out.json", fs.ModeDir | 0o755},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			err := WriteFile(dir+"/"+tt.path, []byte("x"), Options{Perm: tt.perm}) // not Join, which cleans
			if !errors.Is(err, fs.ErrInvalid) {
				t.Errorf("WriteFile error = %v, want fs.ErrInvalid", err)
			}
			assertNames(t, dir)
		})
	}
}

func TestWriteFile_FailureLeavesFolderAsItWas(t *testing.T) {
	newData := bytes.Repeat([]byte("n"), 64<<10)
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) (target string)
		// write runs WriteFile; nil means a plain WriteFile(target, newData).
		write func(t *testing.T, target string) error
		want  []error // errors.Is must hold for one of them
	}{
		{
			name: "parent is a regular file",
			setup: func(t *testing.T, dir string) string {
				mustWrite(t, filepath.Join(dir, "file"), "plain")
				return filepath.Join(dir, "file", "sub", "out.json")
			},
			want: []error{syscall.ENOTDIR},
		},
		{
			name: "target is a folder",
			setup: func(t *testing.T, dir string) string {
				mustWrite(t, filepath.Join(dir, "out.json", "keep"), "kept")
				return filepath.Join(dir, "out.json")
			},
			// Go's os.Rename refuses with EEXIST; rename(2) itself says EISDIR.
			want: []error{syscall.EEXIST, syscall.EISDIR},
		},
		{
			name: "file larger than RLIMIT_FSIZE fails mid-write",
			setup: func(t *testing.T, dir string) string {
				mustWrite(t, filepath.Join(dir, "out.json"), "old")
				return filepath.Join(dir, "out.json")
			},
			write: func(t *testing.T, target string) error {
				var old syscall.Rlimit
				if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
					t.Fatal(err)
				}
				// Process-wide: restored right after the call, before anything else writes a file.
				if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: 4096, Max: old.Max}); err != nil {
					t.Skipf("cannot lower RLIMIT_FSIZE: %v", err)
				}
				err := WriteFile(target, newData, Options{})
				if rerr := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old); rerr != nil {
					t.Fatalf("restore RLIMIT_FSIZE: %v", rerr)
				}
				return err
			},
			want: []error{syscall.EFBIG},
		},
		{
			name: "read-only folder",
			setup: func(t *testing.T, dir string) string {
				if os.Geteuid() == 0 {
					t.Skip("root ignores permission bits (CAP_DAC_OVERRIDE); " +
						"TestWriteFile_ErrorKeepsCause/permission_denied covers this as user nobody")
				}
				ro := filepath.Join(dir, "ro")
				mustWrite(t, filepath.Join(ro, "out.json"), "old")
				if err := os.Chmod(ro, 0o555); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = os.Chmod(ro, 0o755) }) // so that t.TempDir can remove it
				return filepath.Join(ro, "out.json")
			},
			want: []error{fs.ErrPermission},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			target := tt.setup(t, dir)
			before := mustSnapshot(t, dir)

			var err error
			if tt.write != nil {
				err = tt.write(t, target)
			} else {
				err = WriteFile(target, newData, Options{})
			}
			if !isAny(err, tt.want) {
				t.Errorf("WriteFile error = %v, want one matching %v", err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), target) {
				t.Errorf("error %q does not name the target %s", err, target)
			}
			if after := mustSnapshot(t, dir); !maps.Equal(before, after) {
				t.Errorf("folder changed:\nbefore %q\nafter  %q", before, after)
			}
		})
	}
}

// causeScenarios are failures that need privileges to set up (mounts, another user). They run in a
// child process, the test binary itself, so that mounts stay in a private mount namespace and
// dropped privileges end with the child. The child does the checks and reports through its exit
// status.
type causeScenario struct {
	name     string
	mount    bool // needs a private mount namespace, so root
	asNobody bool // root drops to user nobody before WriteFile, so that permission bits apply
	// setup prepares dir as root (when running as root) and returns the target path.
	setup func(dir string) (string, error)
	want  error
}

func causeScenarios() []causeScenario {
	return []causeScenario{
		{
			name:  "no space left",
			mount: true,
			setup: func(dir string) (string, error) {
				small := filepath.Join(dir, "small")
				if err := os.Mkdir(small, 0o755); err != nil {
					return "", err
				}
				if err := syscall.Mount("tmpfs", small, "tmpfs", 0, "size=64k"); err != nil {
					return "", skipError{fmt.Sprintf("mount tmpfs: %v", err)}
				}
				target := filepath.Join(small, "out.json")
				return target, WriteFile(target, []byte("old"), Options{})
			},
			want: syscall.ENOSPC,
		},
		{
			name:  "target is a bind mount",
			mount: true,
			setup: func(dir string) (string, error) {
				target, src := filepath.Join(dir, "out.json"), filepath.Join(dir, "src")
				if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
					return "", err
				}
				if err := os.WriteFile(src, []byte("bound"), 0o644); err != nil {
					return "", err
				}
				if err := syscall.Mount(src, target, "", syscall.MS_BIND, ""); err != nil {
					return "", skipError{fmt.Sprintf("bind mount: %v", err)}
				}
				return target, nil
			},
			want: syscall.EBUSY,
		},
		{
			name:  "read-only file system",
			mount: true,
			setup: func(dir string) (string, error) {
				ro := filepath.Join(dir, "ro")
				if err := os.Mkdir(ro, 0o755); err != nil {
					return "", err
				}
				target := filepath.Join(ro, "out.json")
				if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
					return "", err
				}
				if err := syscall.Mount(ro, ro, "", syscall.MS_BIND, ""); err != nil {
					return "", skipError{fmt.Sprintf("bind mount: %v", err)}
				}
				if err := syscall.Mount("", ro, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
					return "", skipError{fmt.Sprintf("remount read-only: %v", err)}
				}
				return target, nil
			},
			want: syscall.EROFS,
		},
		{
			name:     "permission denied",
			asNobody: true,
			setup: func(dir string) (string, error) {
				// User nobody must reach the folder: t.TempDir and its parent are 0700.
				for _, d := range []string{filepath.Dir(dir), dir} {
					if err := os.Chmod(d, 0o755); err != nil {
						return "", err
					}
				}
				ro := filepath.Join(dir, "ro")
				if err := os.Mkdir(ro, 0o755); err != nil {
					return "", err
				}
				target := filepath.Join(ro, "out.json")
				if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
					return "", err
				}
				return target, os.Chmod(ro, 0o555)
			},
			want: fs.ErrPermission,
		},
	}
}

// runCause is the child's side of a causeScenario.
func runCause(sc causeScenario, dir string) error {
	target, err := sc.setup(dir)
	if err != nil {
		return err
	}
	folder := filepath.Dir(target)
	before, err := snapshot(folder)
	if err != nil {
		return err
	}
	if sc.asNobody && os.Geteuid() == 0 {
		const nobody = 65534
		if err := syscall.Setgroups(nil); err != nil {
			return skipError{fmt.Sprintf("setgroups: %v", err)}
		}
		if err := syscall.Setgid(nobody); err != nil {
			return skipError{fmt.Sprintf("setgid: %v", err)}
		}
		if err := syscall.Setuid(nobody); err != nil {
			return skipError{fmt.Sprintf("setuid: %v", err)}
		}
	}
	err = WriteFile(target, bytes.Repeat([]byte("n"), 1<<20), Options{})
	if !errors.Is(err, sc.want) {
		return fmt.Errorf("WriteFile error = %v, want errors.Is %v", err, sc.want)
	}
	after, serr := snapshot(folder)
	if serr != nil {
		return serr
	}
	if !maps.Equal(before, after) {
		return fmt.Errorf("folder changed:\nbefore %q\nafter  %q", before, after)
	}
	fmt.Printf("error as reported: %v\n", err)
	return nil
}

func TestWriteFile_ErrorKeepsCause(t *testing.T) {
	for _, sc := range causeScenarios() {
		t.Run(sc.name, func(t *testing.T) {
			if sc.mount && os.Geteuid() != 0 {
				t.Skip("needs root to mount in a private mount namespace")
			}
			attr := &syscall.SysProcAttr{}
			if sc.mount {
				// Go makes / private in the new namespace, so nothing mounted there is seen outside.
				attr.Unshareflags = syscall.CLONE_NEWNS
			}
			dir := t.TempDir()
			// Registered after TempDir, so it runs before TempDir's removal, which a folder left
			// read-only for a non-root user would stop.
			t.Cleanup(func() { makeFoldersWritable(dir) })
			cmd := helperCommand(t, "cause:"+sc.name, dir, nil)
			cmd.SysProcAttr = attr
			code, out := run(t, cmd)
			switch code {
			case 0:
				t.Log(strings.TrimSpace(out))
			case skipExit:
				t.Skip(strings.TrimSpace(out))
			default:
				t.Fatalf("helper exited %d:\n%s", code, out)
			}
		})
	}
}

func TestWriteFile_CrashAtStepLeavesOldOrNewFile(t *testing.T) {
	tests := []struct {
		step   string
		want   string // the target's bytes after the crash
		strays int    // temporary files left
	}{
		{StepSynced, "old", 1},
		{StepRenamed, "new", 0},
	}
	for _, tt := range tests {
		t.Run(tt.step, func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, "out.json")
			if err := WriteFile(target, []byte("old"), Options{}); err != nil {
				t.Fatal(err)
			}

			code, out := run(t, helperCommand(t, "crash", dir, []string{helperStepEnv + "=" + tt.step}))
			if code != crashExit {
				t.Fatalf("helper exited %d, want %d (exit at step %s):\n%s", code, crashExit, tt.step, out)
			}
			if got := readFile(t, target); string(got) != tt.want {
				t.Errorf("after a crash at %s the target holds %q, want %q", tt.step, got, tt.want)
			}
			strays := namesExcept(t, dir, "out.json")
			if len(strays) != tt.strays {
				t.Fatalf("after a crash at %s the folder holds %q besides the target, want %d temporary files", tt.step, strays, tt.strays)
			}
			for _, s := range strays {
				if got := readFile(t, filepath.Join(dir, s)); string(got) != "new" {
					t.Errorf("the temporary file %s holds %q, want the synced %q", s, got, "new")
				}
			}
			if n, err := RemoveTemps(target); n != tt.strays || err != nil {
				t.Errorf("RemoveTemps = %d, %v; want %d, nil", n, err, tt.strays)
			}
			assertNames(t, dir, "out.json")
		})
	}
}

// TestWriteFile_SyscallOrder checks, through strace, the one thing no file state shows: that the
// file is synced before the rename and the folder after it (and new folders before the file).
func TestWriteFile_SyscallOrder(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed")
	}
	tests := []struct {
		name string
		rel  string
		want []string
	}{
		{
			name: "existing folder",
			rel:  "out.json",
			want: []string{
				"open TEMP create", "write TEMP", "fchmod TEMP 0640", "fsync TEMP", "close TEMP",
				"rename TEMP out.json",
				"open . directory", "fsync .", "close .",
			},
		},
		{
			name: "new folders",
			rel:  "a/b/out.json",
			want: []string{
				"mkdir a 0755", "chmod a 0755", "mkdir a/b 0755", "chmod a/b 0755",
				"open a/b directory", "fsync a/b", "close a/b",
				"open a directory", "fsync a", "close a",
				"open . directory", "fsync .", "close .",
				"open a/b/TEMP create", "write a/b/TEMP", "fchmod a/b/TEMP 0640", "fsync a/b/TEMP", "close a/b/TEMP",
				"rename a/b/TEMP a/b/out.json",
				"open a/b directory", "fsync a/b", "close a/b",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			trace := filepath.Join(t.TempDir(), "trace")
			cmd := helperCommand(t, "write", dir, []string{helperPathEnv + "=" + tt.rel})
			cmd.Args = append([]string{strace, "-f", "-qq", "-y", "-o", trace,
				"-e", "trace=mkdirat,fchmodat,fchmod,openat,write,fsync,fdatasync,close,renameat,renameat2,unlinkat"},
				cmd.Args...)
			cmd.Path = strace
			code, out := run(t, cmd)
			if code != 0 {
				if strings.Contains(out, "PTRACE") || strings.Contains(out, "ptrace") {
					t.Skipf("strace cannot trace here: %s", out)
				}
				t.Fatalf("strace helper exited %d:\n%s", code, out)
			}
			log, err := os.ReadFile(trace)
			if err != nil {
				t.Fatal(err)
			}
			got := traceEvents(string(log), dir, "out.json")
			if !slices.Equal(got, tt.want) {
				t.Errorf("system calls on the folder:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

// traceEvents turns an strace -f -y log into the calls that touch dir, in order: the call's name,
// the paths under dir it touches (the temporary file of base shown as TEMP), and the flag or mode
// that matters. Consecutive repeats (a write in several parts) count once.
func traceEvents(log, dir, base string) []string {
	pathRe := regexp.MustCompile(`"([^"]*)"|<(/[^>]*)>`)
	tempRe := regexp.MustCompile(`(^|/)\.` + regexp.QuoteMeta(base) + `\.cmx-tmp-[0-9a-f]{16}$`)
	modeRe := regexp.MustCompile(`, (0[0-7]+)\)?$`)
	names := map[string]string{"openat": "open", "mkdirat": "mkdir", "fchmodat": "chmod",
		"renameat": "rename", "renameat2": "rename", "unlinkat": "unlink"}
	var events []string
	for _, line := range strings.Split(log, "\n") {
		if _, rest, ok := strings.Cut(line, " "); ok && isDigits(line[:len(line)-len(rest)-1]) {
			line = strings.TrimLeft(rest, " ")
		}
		name, args, ok := strings.Cut(line, "(")
		if !ok || strings.HasPrefix(line, "<...") {
			continue // not a call, or the second half of one split by another thread
		}
		if i := strings.LastIndex(args, ") = "); i >= 0 {
			args = args[:i] // drop the result, whose path annotation would repeat the argument
		} else if i := strings.Index(args, " <unfinished"); i >= 0 {
			args = args[:i]
		}
		ev := []string{name}
		if n, ok := names[name]; ok {
			ev[0] = n
		}
		touches := false
		for _, m := range pathRe.FindAllStringSubmatch(args, -1) {
			p := m[1] + m[2]
			rel, err := filepath.Rel(dir, p)
			if !filepath.IsAbs(p) || err != nil || strings.HasPrefix(rel, "..") {
				continue
			}
			touches = true
			ev = append(ev, tempRe.ReplaceAllString(rel, "${1}TEMP"))
		}
		if !touches {
			continue
		}
		switch {
		case ev[0] == "open" && strings.Contains(args, "O_CREAT"):
			ev = append(ev, "create")
		case ev[0] == "open" && strings.Contains(args, "O_DIRECTORY"):
			ev = append(ev, "directory")
		case ev[0] == "mkdir" || ev[0] == "chmod" || ev[0] == "fchmod":
			if m := modeRe.FindStringSubmatch(args); m != nil {
				ev = append(ev, m[1])
			}
		}
		e := strings.Join(ev, " ")
		if len(events) == 0 || events[len(events)-1] != e {
			events = append(events, e)
		}
	}
	return events
}

func isDigits(s string) bool {
	_, err := strconv.Atoi(s)
	return s != "" && err == nil
}

func TestRemoveTemps_RemovesOnlyItsOwnTemporaries(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "a.json")
	if err := WriteFile(target, []byte("current"), Options{}); err != nil {
		t.Fatal(err)
	}
	own := []string{leaveTemp(t, target, []byte("v1")), leaveTemp(t, target, []byte("v2"))}
	// Temporary files of other targets, including ones whose names extend this one's.
	for _, other := range []string{"b.json", "a.json.bak", "a.json.cmx-tmp-0123456789abcdef", "a"} {
		leaveTemp(t, filepath.Join(dir, other), []byte("other"))
	}
	// Files that look like ours but are not what WriteFile makes.
	for _, name := range []string{".a.json", ".a.json.swp", ".a.json.cmx-tmp-", ".a.json.cmx-tmp-xyz",
		".a.json.cmx-tmp-0123456789ABCDEF", ".a.json.cmx-tmp-0123456789abcdef0", "a.json.cmx-tmp-0123456789abcdef"} {
		mustWrite(t, filepath.Join(dir, name), "not a temporary file")
	}
	if err := os.Mkdir(filepath.Join(dir, ".a.json.cmx-tmp-fedcba9876543210"), 0o755); err != nil {
		t.Fatal(err)
	}
	before := names(t, dir)

	n, err := RemoveTemps(target)
	if n != 2 || err != nil {
		t.Errorf("RemoveTemps = %d, %v; want 2, nil", n, err)
	}
	want := slices.DeleteFunc(slices.Clone(before), func(s string) bool { return slices.Contains(own, s) })
	assertNames(t, dir, want...)
	if got := readFile(t, target); string(got) != "current" {
		t.Errorf("target holds %q, want %q", got, "current")
	}

	if n, err := RemoveTemps(target); n != 0 || err != nil {
		t.Errorf("second RemoveTemps = %d, %v; want 0, nil", n, err)
	}
}

func TestRemoveTemps_MissingFolderIsNothingToDo(t *testing.T) {
	n, err := RemoveTemps(filepath.Join(t.TempDir(), "missing", "out.json"))
	if n != 0 || err != nil {
		t.Errorf("RemoveTemps = %d, %v; want 0, nil", n, err)
	}
}

func TestRemove_IsIdempotent(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) (path string)
	}{
		{"existing file", func(t *testing.T, dir string) string {
			mustWrite(t, filepath.Join(dir, "out.json"), "x")
			return filepath.Join(dir, "out.json")
		}},
		{"missing file", func(t *testing.T, dir string) string { return filepath.Join(dir, "out.json") }},
		{"missing folder", func(t *testing.T, dir string) string { return filepath.Join(dir, "no", "out.json") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tt.setup(t, dir)
			for i := 1; i <= 2; i++ {
				if err := Remove(path); err != nil {
					t.Fatalf("Remove call %d: %v", i, err)
				}
				if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("after Remove call %d: Lstat = %v, want not exist", i, err)
				}
			}
			assertNames(t, dir)
		})
	}
}

func TestRemove_RefusesFolder(t *testing.T) {
	dir := t.TempDir()
	folder := filepath.Join(dir, "out.json")
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Remove(folder); !errors.Is(err, syscall.EISDIR) {
		t.Errorf("Remove(folder) = %v, want EISDIR", err)
	}
	assertNames(t, dir, "out.json")
}

func TestSyncDir_SyncsFoldersOnly(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, "file"), "x")
	tests := []struct {
		name string
		path string
		want error // nil: success
	}{
		{"folder", dir, nil},
		{"missing folder", filepath.Join(dir, "missing"), fs.ErrNotExist},
		{"regular file", filepath.Join(dir, "file"), syscall.ENOTDIR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := SyncDir(tt.path)
			if (tt.want == nil && err != nil) || !errors.Is(err, tt.want) {
				t.Errorf("SyncDir = %v, want %v", err, tt.want)
			}
		})
	}
}

func BenchmarkWriteFile(b *testing.B) {
	for _, bc := range []struct {
		name string
		size int
	}{{"1KiB", 1 << 10}, {"1MiB", 1 << 20}} {
		b.Run(bc.name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "out.json")
			data := bytes.Repeat([]byte("x"), bc.size)
			b.SetBytes(int64(bc.size))
			for b.Loop() {
				if err := WriteFile(path, data, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The test binary doubles as the helper process for crashes, strace and privileged setups.
const (
	helperEnv     = "CMX_APPLY_TEST_HELPER" // what the child does instead of running the tests
	helperDirEnv  = "CMX_APPLY_TEST_DIR"    // the folder it works in
	helperStepEnv = "CMX_APPLY_TEST_STEP"   // "crash": the step at which it exits
	helperPathEnv = "CMX_APPLY_TEST_PATH"   // "write": the target, relative to the folder
	crashExit     = 7
	skipExit      = 3
)

func TestMain(m *testing.M) {
	if what := os.Getenv(helperEnv); what != "" {
		os.Exit(helperMain(what, os.Getenv(helperDirEnv)))
	}
	os.Exit(m.Run())
}

// skipError is a helper's way of saying that the machine cannot set the scenario up.
type skipError struct{ reason string }

func (e skipError) Error() string { return e.reason }

func helperMain(what, dir string) int {
	var err error
	switch name, isCause := strings.CutPrefix(what, "cause:"); {
	case what == "crash":
		at := os.Getenv(helperStepEnv)
		err = WriteFile(filepath.Join(dir, "out.json"), []byte("new"), Options{Step: func(step string) {
			if step == at {
				os.Exit(crashExit)
			}
		}})
		if err == nil {
			err = fmt.Errorf("WriteFile returned without reaching step %q", at)
		}
	case what == "write":
		err = WriteFile(filepath.Join(dir, os.Getenv(helperPathEnv)), []byte("new"), Options{Perm: 0o640})
	case isCause:
		err = fmt.Errorf("unknown scenario %q", name)
		for _, sc := range causeScenarios() {
			if sc.name == name {
				err = runCause(sc, dir)
			}
		}
	default:
		err = fmt.Errorf("unknown helper %q", what)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		if errors.As(err, new(skipError)) {
			return skipExit
		}
		return 1
	}
	return 0
}

func helperCommand(t *testing.T, what, dir string, env []string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
	// A race-enabled child otherwise sleeps a second before it exits.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(os.Environ(), helperEnv+"="+what, helperDirEnv+"="+dir, "GORACE="+gorace)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// run runs cmd and returns its exit status and combined output.
func run(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("run %s: %v", cmd.Path, err)
	}
	return 0, string(out)
}

// leaveTemp runs a WriteFile of path that stops right after StepSynced, as a crash there would, and
// returns the name of the temporary file it left.
func leaveTemp(t *testing.T, path string, data []byte) string {
	t.Helper()
	dir := filepath.Dir(path)
	before := names(t, dir)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = WriteFile(path, data, Options{Step: func(step string) {
			if step == StepSynced {
				runtime.Goexit()
			}
		}})
	}()
	<-done
	var added []string
	for _, n := range names(t, dir) {
		if !slices.Contains(before, n) {
			added = append(added, n)
		}
	}
	if len(added) != 1 {
		t.Fatalf("stopping at %s left %q, want one temporary file", StepSynced, added)
	}
	return added[0]
}

func makeFoldersWritable(root string) {
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
}

func setUmask(t *testing.T, mask int) {
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustWrite(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func fileMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

// names lists dir, sorted.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func namesExcept(t *testing.T, dir, except string) []string {
	t.Helper()
	return slices.DeleteFunc(names(t, dir), func(s string) bool { return s == except })
}

// assertNames checks that dir holds exactly the given names.
func assertNames(t *testing.T, dir string, want ...string) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	if got := names(t, dir); !slices.Equal(got, want) {
		t.Errorf("folder holds %q, want %q", got, want)
	}
}

// snapshot describes every entry under root: type, mode and, for files, the bytes.
func snapshot(root string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		desc := info.Mode().String()
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + string(b)
		}
		out[p] = desc
		return nil
	})
	return out, err
}

func mustSnapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	s, err := snapshot(root)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func isAny(err error, targets []error) bool {
	for _, target := range targets {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// versionIndex reads the index that the concurrent test puts at the start of each version.
func versionIndex(b []byte) int {
	if len(b) < 4 || b[3] != '|' {
		return -1
	}
	i, err := strconv.Atoi(string(b[:3]))
	if err != nil {
		return -1
	}
	return i
}

func head(b []byte) []byte {
	return b[:min(len(b), 16)]
}
