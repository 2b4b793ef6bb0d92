package main

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// initArgs are the flags of a complete init into dir.
func initArgs(dir string, more ...string) []string {
	return append([]string{"init", "--config", filepath.Join(dir, "agent.toml"), "--token", "gw-042",
		"--server", "tcp://127.0.0.1:1883", "--app-version", "app-v1", "--output", filepath.Join(dir, "out", "gw-042.json")}, more...)
}

func wantMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != want {
		t.Errorf("%s has mode %04o, want %04o", path, fi.Mode().Perm(), want)
	}
}

// checkAccepts runs `check` on path, as the operator would next.
func checkAccepts(t *testing.T, path string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"check", "--config", path}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), path+": ok") {
		t.Errorf("check of what init wrote: exit %d\nstdout: %s\nstderr: %s\nfile:\n%s", code, stdout.String(), stderr.String(), readOrEmpty(path))
	}
}

func readOrEmpty(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func TestInit_WritesACommentedFileThatCheckAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		more []string
		want []string
	}{
		{"cmx3", nil, []string{`token = "gw-042"`, `servers = ["tcp://127.0.0.1:1883"]`, `app_version = "app-v1"`, `dialect = "cmx3"`, `# ca_file = ""`, "# hook = []"}},
		{"cmp7 with a CA", []string{"--dialect", "cmp7", "--ca-file", "ca.pem"}, []string{`dialect = "cmp7"`, `ca_file = "ca.pem"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeOrFail(t, filepath.Join(dir, "ca.pem"), "-----BEGIN CERTIFICATE-----\n")
			path := filepath.Join(dir, "agent.toml")
			var stdout, stderr bytes.Buffer
			if code := run(initArgs(dir, tc.more...), &stdout, &stderr); code != 0 {
				t.Fatalf("init: exit %d\nstderr: %s", code, stderr.String())
			}
			if !strings.HasPrefix(stdout.String(), "wrote "+path+" (mode 0640)\n") {
				t.Errorf("stdout %q, want it to say what was written", stdout.String())
			}
			wantMode(t, path, 0o640)
			body := readOrEmpty(path)
			for _, w := range append(tc.want, "# cmx-agent configuration", "# owner = \"\"") {
				if !strings.Contains(body, w) {
					t.Errorf("the file lacks %q:\n%s", w, body)
				}
			}
			checkAccepts(t, path)
		})
	}
}

func TestInit_KeepsAnExistingFileUnlessForced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.toml")
	writeOrFail(t, path, "# the operator's own\n")
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run(initArgs(dir), &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), path+" exists and is kept as it is; add --force to replace it") {
		t.Errorf("init over a file: exit %d, stderr %q; want 2 and the reason", code, stderr.String())
	}
	if got := readOrEmpty(path); got != "# the operator's own\n" {
		t.Errorf("the file now holds %q, want it kept", got)
	}
	stdout.Reset()
	stderr.Reset()
	if code := run(initArgs(dir, "--force"), &stdout, &stderr); code != 0 {
		t.Fatalf("init --force: exit %d: %s", code, stderr.String())
	}
	wantMode(t, path, 0o640)
	checkAccepts(t, path)
}

// A file replaced with --force keeps its owner and group: the packaged one is root:cmx-agent,
// and the service reads it as the group.
func TestInit_ForceKeepsTheReplacedFilesOwnerAndGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another group needs root")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.toml")
	writeOrFail(t, path, "old\n")
	if err := os.Chown(path, 0, 12345); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run(initArgs(dir, "--force"), &stdout, &stderr); code != 0 {
		t.Fatalf("init --force: exit %d: %s", code, stderr.String())
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 12345 {
		t.Errorf("group %d after init --force, want 12345 as before", gid)
	}
}

func TestInit_RefusesWhatCheckWouldRefuseAndWritesNothing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		args   func(dir string) []string
		stderr string
	}{
		{"missing flags without a terminal", func(dir string) []string {
			return []string{"init", "--config", filepath.Join(dir, "agent.toml"), "--app-version", "a"}
		}, "cmx-agent init: missing --token, --server (stdin is not a terminal to ask on)"},
		{"the placeholder token", func(dir string) []string {
			return []string{"init", "--config", filepath.Join(dir, "agent.toml"), "--token", "change-me", "--server", "tcp://127.0.0.1:1883", "--app-version", "a"}
		}, `token: "change-me" is the packaged placeholder`},
		{"a server URL of another scheme", func(dir string) []string {
			return []string{"init", "--config", filepath.Join(dir, "agent.toml"), "--token", "gw", "--server", "http://broker", "--app-version", "a"}
		}, "broker.servers"},
		{"a token with a topic wildcard", func(dir string) []string { return initArgs(dir, "--token", "gw/+") }, "endpoint #1 token"},
		{"a CA file that does not exist", func(dir string) []string { return initArgs(dir, "--ca-file", "nope.pem") }, "broker.ca_file"},
		{"an unknown dialect", func(dir string) []string { return initArgs(dir, "--dialect", "kaa9") }, "kaa.dialect"},
		{"an argument", func(dir string) []string { return append(initArgs(dir), "extra") }, `unexpected argument "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var stdout, stderr bytes.Buffer
			stdin, err := os.Open(os.DevNull) // a character device, but no terminal
			if err != nil {
				t.Fatal(err)
			}
			defer stdin.Close()
			code := cmdInit(tc.args(dir)[1:], stdin, &stdout, &stderr)
			if code != 2 || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, stderr.String(), tc.stderr)
			}
			if _, err := os.Lstat(filepath.Join(dir, "agent.toml")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a file was written (%v)", err)
			}
		})
	}
}

// openPTY returns a pseudo-terminal's controlling side and its terminal.
func openPTY(t *testing.T) (ptmx, tty *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err = os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	return ptmx, tty
}

// On a terminal init asks (on stderr) for what the flags did not give.
func TestInit_AsksOnATerminalForWhatIsMissing(t *testing.T) {
	ptmx, tty := openPTY(t)
	// Typed ahead: the terminal holds the lines until init reads them.
	if _, err := ptmx.WriteString("gw-077\ntcp://127.0.0.1:1883\n"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.toml")
	var stdout, stderr bytes.Buffer
	code := cmdInit([]string{"--config", path, "--app-version", "app-v1", "--output", filepath.Join(dir, "o.json")}, tty, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("init: exit %d, stderr %q", code, stderr.String())
	}
	if want := "endpoint token of this gateway (--token): MQTT broker URL (tcp://HOST:1883, tls://HOST:8883) (--server): "; stderr.String() != want {
		t.Errorf("stderr %q, want the two questions %q", stderr.String(), want)
	}
	body := readOrEmpty(path)
	for _, w := range []string{`token = "gw-077"`, `servers = ["tcp://127.0.0.1:1883"]`} {
		if !strings.Contains(body, w) {
			t.Errorf("the file lacks %q:\n%s", w, body)
		}
	}
	checkAccepts(t, path)
}
