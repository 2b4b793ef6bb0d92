package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

type watcher struct {
	lines  chan string
	cmd    *exec.Cmd
	stderr testkit.Buffer // as the process writes it, readable while it runs
}

// waitStderr waits until watch has written s to stderr.
func (w *watcher) waitStderr(t *testing.T, s string) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, func() bool { return strings.Contains(w.stderr.String(), s) },
		"watch did not write %q to stderr", s)
}

func startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	return startWatchIn(t, "", args...)
}

// startWatchIn is startWatch with the working directory dir ("" = the test's).
func startWatchIn(t *testing.T, dir string, args ...string) *watcher {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"watch"}, args...)...)
	cmd.Dir = dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{lines: make(chan string, 1000), cmd: cmd}
	cmd.Stderr = &w.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("watch stderr:\n%s", w.stderr.String())
		}
	})
	return w
}

// next returns the next version line as "size sha256".
func (w *watcher) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-w.lines:
		if !ok {
			t.Fatal("watch exited")
		}
		f := strings.Fields(l)
		if len(f) != 3 {
			t.Fatalf("line %q: want time size sha256", l)
		}
		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Fatalf("line %q: time: %v", l, err)
		}
		return f[1] + " " + f[2]
	case <-time.After(10 * time.Second):
		t.Fatal("no version line within 10s")
	}
	return ""
}

func versionOf(b []byte) string {
	s := sha256.Sum256(b)
	return fmt.Sprintf("%d %s", len(b), hex.EncodeToString(s[:]))
}

func replaceAtomically(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// content i has a size of its own, so a mix of two versions could not pass for either.
func content(i int) []byte {
	return []byte(strings.Repeat(fmt.Sprintf("version %d\n", i), 100+i*37))
}

func TestWatch_SeesEveryVersionAcross100AtomicReplacements(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cfg.json")
	os.WriteFile(path, content(0), 0o644)
	w := startWatch(t, "--debounce", "10ms", path)
	if got := w.next(t); got != versionOf(content(0)) {
		t.Fatalf("first line %q, want the current version", got)
	}
	start := time.Now()
	for i := 1; i <= 100; i++ {
		replaceAtomically(t, path, content(i))
		if got := w.next(t); got != versionOf(content(i)) {
			t.Fatalf("version %d: line %q, want %q", i, got, versionOf(content(i)))
		}
	}
	t.Logf("100 versions seen in %v", time.Since(start))
}

func TestWatch_BurstNeverShowsAPartialFileAndEndsOnTheLast(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cfg.json")
	log := filepath.Join(dir, "cmd.log")
	os.WriteFile(path, content(0), 0o644)
	w := startWatch(t, path, "--", "/bin/sh", "-c", `echo "$CMX_WATCH_SIZE $CMX_WATCH_SHA256" >> `+log)
	if got := w.next(t); got != versionOf(content(0)) {
		t.Fatalf("first line %q, want the current version", got)
	}
	valid := map[string]int{}
	for i := 1; i <= 100; i++ {
		valid[versionOf(content(i))] = i
		replaceAtomically(t, path, content(i))
	}
	final := versionOf(content(100))
	for {
		got := w.next(t)
		if _, ok := valid[got]; !ok {
			t.Fatalf("line %q is none of the versions written (a partial file?)", got)
		}
		if got == final {
			break
		}
	}
	// The command ran after the last version with its size and hash.
	var b []byte
	testkit.Eventually(t, 5*time.Second, func() bool {
		b, _ = os.ReadFile(log)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		return lines[len(lines)-1] == final
	}, "command log %s, want it to end with %q", func() string { return fmt.Sprintf("%q", b) }, final)
}

func TestWatch_SurvivesAbsenceOfTheFileAndItsFolder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	path := filepath.Join(dir, "cfg.json")
	w := startWatch(t, "--debounce", "20ms", path) // neither exists yet
	os.MkdirAll(dir, 0o755)
	replaceAtomically(t, path, content(1))
	if got := w.next(t); got != versionOf(content(1)) {
		t.Fatalf("line %q", got)
	}
	os.RemoveAll(dir)
	os.MkdirAll(dir, 0o755)
	replaceAtomically(t, path, content(2))
	if got := w.next(t); got != versionOf(content(2)) {
		t.Fatalf("line %q after the folder came back", got)
	}
}

// A file named relative to the working directory is followed like any other: the folder's events
// name it "./f.txt", which once never matched "f.txt".
func TestWatch_FileInTheWorkingDirectorySeesChanges(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f.txt"), content(0), 0o644)
	w := startWatchIn(t, dir, "--debounce", "10ms", "f.txt")
	if got := w.next(t); got != versionOf(content(0)) {
		t.Fatalf("first line %q, want the current version", got)
	}
	replaceAtomically(t, filepath.Join(dir, "f.txt"), content(1))
	if got := w.next(t); got != versionOf(content(1)) {
		t.Fatalf("line %q after a replacement, want %q", got, versionOf(content(1)))
	}
}

// A file that does not exist at the start has no current version to leave out: its first version
// is new and runs the command (a script started at boot must not miss the agent's first write).
func TestWatch_FileAbsentAtStartRunsTheCommandForItsFirstVersion(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cfg.json")
	log := filepath.Join(dir, "cmd.log")
	w := startWatch(t, "--debounce", "10ms", path, "--", "/bin/sh", "-c", `echo "$CMX_WATCH_SIZE $CMX_WATCH_SHA256" >> `+log)
	w.waitStderr(t, path+": absent; waiting for it")
	replaceAtomically(t, path, content(1))
	if got := w.next(t); got != versionOf(content(1)) {
		t.Fatalf("line %q, want %q", got, versionOf(content(1)))
	}
	waitFileLines(t, log, []string{versionOf(content(1))})
}

// waitFileLines waits until the file at path holds exactly the lines want.
func waitFileLines(t *testing.T, path string, want []string) {
	t.Helper()
	var b []byte
	testkit.Eventually(t, 5*time.Second, func() bool {
		b, _ = os.ReadFile(path)
		return slices.Equal(strings.Split(strings.TrimSpace(string(b)), "\n"), want)
	}, "%s holds %s, want the lines %q", path, func() string { return fmt.Sprintf("%q", b) }, want)
}

// A FIFO put at the watched path is said to be no regular file and stalls nothing: the regular
// file that replaces it is reported.
func TestWatch_AFIFOAtThePathStallsNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cfg.json")
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, "--debounce", "10ms", path)
	w.waitStderr(t, "not a regular file")
	replaceAtomically(t, path, content(1))
	if got := w.next(t); got != versionOf(content(1)) {
		t.Fatalf("line %q, want %q", got, versionOf(content(1)))
	}
}
