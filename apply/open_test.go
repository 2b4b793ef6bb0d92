package apply

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// nonRegular is what can sit at an output path instead of a regular file, and the words an error
// names it with.
var nonRegular = []struct {
	kind  string
	plant func(t *testing.T, path string)
}{
	{"symbolic link", func(t *testing.T, path string) {
		secret := filepath.Join(t.TempDir(), "secret")
		mustWrite(t, secret, "root's secret")
		if err := os.Chmod(secret, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(secret, path); err != nil {
			t.Fatal(err)
		}
	}},
	{"FIFO", func(t *testing.T, path string) { plantFIFO(t, path) }},
	{"socket", func(t *testing.T, path string) { mknod(t, path, syscall.S_IFSOCK, 0) }},
	// 1,3 is /dev/null: reading it would succeed with nothing, a hash of no bytes.
	{"device", func(t *testing.T, path string) { mknod(t, path, syscall.S_IFCHR, 1<<8|3) }},
	{"directory", func(t *testing.T, path string) {
		if err := os.Mkdir(path, 0o755); err != nil {
			t.Fatal(err)
		}
	}},
}

// plantFIFO makes a FIFO at path. Should the code under test block opening it for reading, the
// cleanup opens it for writing, which lets that open return, so a failing test ends.
func plantFIFO(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Non-blocking: this fails at once (ENXIO) when nobody is blocked reading.
		if fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			syscall.Close(fd)
		}
	})
}

func mknod(t *testing.T, path string, kind uint32, dev int) {
	t.Helper()
	if err := syscall.Mknod(path, kind|0o644, dev); err != nil {
		if errors.Is(err, syscall.EPERM) {
			t.Skipf("mknod %s: %v (needs CAP_MKNOD)", path, err)
		}
		t.Fatal(err)
	}
}

// within runs f and fails the test if it has not returned after d: a call that blocks on what sits
// at a path must show as a failure, not as a test that never ends.
func within[T any](t *testing.T, d time.Duration, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(d):
		t.Fatalf("%s did not return within %v: it blocks on what sits at the path", what, d)
		panic("unreachable")
	}
}

func TestHashFile_HashesARegularFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.json")
	mustWrite(t, path, "applied")
	sum := sha256.Sum256([]byte("applied"))
	if got, err := HashFile(path); err != nil || got != hex.EncodeToString(sum[:]) {
		t.Errorf("HashFile = %q, %v; want %x", got, err, sum)
	}
}

// HashFile (the drift check) goes through OpenRegular and must answer the same, at once.
func TestOpenRegular_RefusesAnythingButARegularFileWithoutBlocking(t *testing.T) {
	for _, tc := range nonRegular {
		t.Run(tc.kind, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out.json")
			tc.plant(t, path)
			for name, read := range map[string]func() error{
				"OpenRegular": func() error {
					f, _, err := OpenRegular(path)
					if err == nil {
						f.Close()
					}
					return err
				},
				"HashFile": func() error { _, err := HashFile(path); return err },
			} {
				err := within(t, 5*time.Second, name, read)
				var nr *NotRegularError
				if !errors.As(err, &nr) || nr.Path != path || nr.Kind != tc.kind {
					t.Errorf("%s error = %#v, want a *NotRegularError{%q, %q}", name, err, path, tc.kind)
				}
				if want := path + " is a " + tc.kind + ", not a regular file"; err == nil || err.Error() != want {
					t.Errorf("%s error says %v, want %q", name, err, want)
				}
			}
		})
	}
}

func TestOpenRegular_OpensARegularFileAndGivesItsModeAndOwner(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.json")
	mustWrite(t, path, "operator's")
	if err := os.Chmod(path, 0o600|fs.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	f, fi, err := OpenRegular(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if string(b) != "operator's" || err != nil {
		t.Errorf("read %q, %v; want the file's bytes", b, err)
	}
	perm, own := AttrOf(fi)
	if perm != 0o600|fs.ModeSetuid || own.UID != os.Getuid() || own.GID != os.Getgid() {
		t.Errorf("AttrOf = %v %+v, want -rw------- with setuid, owned by %d:%d", perm, own, os.Getuid(), os.Getgid())
	}
}

func TestOpenRegular_MissingFileIsErrNotExist(t *testing.T) {
	if _, _, err := OpenRegular(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenRegular of a missing file = %v, want fs.ErrNotExist", err)
	}
}

func TestReadRegular_RefusesAFileOverTheLimitWithoutReadingIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.json")
	mustWrite(t, path, "12345")
	for _, tc := range []struct {
		limit int64
		ok    bool
	}{{5, true}, {4, false}, {0, false}} {
		b, _, err := ReadRegular(path, tc.limit)
		switch {
		case tc.ok && (err != nil || string(b) != "12345"):
			t.Errorf("limit %d: %q, %v; want the 5 bytes", tc.limit, b, err)
		case !tc.ok && (!errors.As(err, new(*TooLargeError)) || b != nil || err.Error() != fmt.Sprintf("%s holds more than %d bytes", path, tc.limit)):
			t.Errorf("limit %d: %q, %v; want a *TooLargeError naming the path and the limit", tc.limit, b, err)
		}
	}
}

// chown(2) clears setuid and setgid, for root too: a file put back with its own mode keeps them.
func TestOwner_ChownKeepingModeKeepsSetuidAndSetgid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a file another owner needs root")
	}
	path := filepath.Join(t.TempDir(), "out.json")
	const perm = 0o750 | fs.ModeSetuid | fs.ModeSetgid
	if err := WriteFile(path, []byte("x"), Options{Perm: perm}); err != nil {
		t.Fatal(err)
	}
	if err := (Owner{UID: 65534, GID: 65534}).ChownKeepingMode(path, perm); err != nil {
		t.Fatal(err)
	}
	f, fi, err := OpenRegular(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, own := AttrOf(fi); fi.Mode() != perm || own != (Owner{UID: 65534, GID: 65534}) {
		t.Errorf("after ChownKeepingMode: %v %+v, want %v 65534:65534", fi.Mode(), own, perm)
	}
}
