package main

import (
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The package tests build real packages (about a minute on a cold build cache), so they run only
// with CMX_PACKAGING_TEST=1; .ci/run sets it. The unit tests below always run.

func needPackaging(t *testing.T) {
	t.Helper()
	if os.Getenv("CMX_PACKAGING_TEST") != "1" {
		t.Skip("set CMX_PACKAGING_TEST=1 to build and inspect the packages")
	}
}

// repoRoot makes the test run where `go run ./packaging` runs.
func repoRoot(t *testing.T) {
	t.Helper()
	t.Chdir("..")
}

func command(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// unitForVerify is the unit with ExecStart pointing at a freshly built binary: verify wants it to
// exist.
func unitForVerify(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "cmx-agent")
	command(t, "go", "build", "-o", bin, "./cmd/cmx-agent")
	unit, err := os.ReadFile("systemd/cmx-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "cmx-agent.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/bin/cmx-agent", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUnit_VerifiesCleanAndExposureAtMost2_5(t *testing.T) {
	repoRoot(t)
	unit := unitForVerify(t)
	if out := command(t, "systemd-analyze", "verify", unit); strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify printed:\n%s", out)
	}
	out := command(t, "systemd-analyze", "security", "--offline=true", unit)
	m := regexp.MustCompile(`Overall exposure level for cmx-agent.service: ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if v, _ := strconv.ParseFloat(m[1], 64); v > 2.5 {
		t.Errorf("exposure %s, want <= 2.5:\n%s", m[1], out)
	}
}

func TestUnit_HasTheContractsSettings(t *testing.T) {
	repoRoot(t)
	b, err := os.ReadFile("systemd/cmx-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=30s", "Restart=on-failure",
		"RestartPreventExitStatus=2",
		"StateDirectory=cmx-agent", "StateDirectoryMode=0700", "RuntimeDirectory=cmx-agent",
		"ConfigurationDirectory=cmx-agent", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
		"NoNewPrivileges=yes", "Environment=GOTRACEBACK=crash", "LimitCORE=0", "User=cmx-agent",
		"ExecStart=/usr/bin/cmx-agent run --config /etc/cmx-agent/agent.toml",
	} {
		if !strings.Contains(string(b), "\n"+line+"\n") {
			t.Errorf("unit lacks %q", line)
		}
	}
}

type built struct {
	deb, rpm string
	version  string
}

// builds keeps the packages of each version built by this test process: building is most of what
// these tests cost, and the tests only read the files.
var builds struct {
	sync.Mutex
	dir  string
	done map[string]bool
}

func buildPackages(t *testing.T, version string) built {
	t.Helper()
	builds.Lock()
	defer builds.Unlock()
	if builds.done == nil {
		dir, err := os.MkdirTemp("", "cmx-packages-")
		if err != nil {
			t.Fatal(err)
		}
		builds.dir, builds.done = dir, map[string]bool{}
	}
	out := filepath.Join(builds.dir, version)
	if !builds.done[version] {
		if err := run([]string{"-arch", "amd64", "-out", out, "-version", version}); err != nil {
			t.Fatal(err)
		}
		builds.done[version] = true
	}
	debs, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	rpms, _ := filepath.Glob(filepath.Join(out, "*.rpm"))
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("packages in %s: %v %v, want one .deb and one .rpm", out, debs, rpms)
	}
	return built{deb: debs[0], rpm: rpms[0], version: version}
}

func TestPackages_ContentsFlagsAndScripts(t *testing.T) {
	needPackaging(t)
	repoRoot(t)
	p := buildPackages(t, "1.2.3")

	if got := command(t, "dpkg-deb", "-f", p.deb, "Package", "Version", "Architecture", "Recommends"); got != "Package: cmx-agent\nVersion: 1.2.3\nArchitecture: amd64\nRecommends: bash-completion\n" {
		t.Errorf("deb control fields:\n%s", got)
	}
	list := command(t, "dpkg-deb", "-c", p.deb)
	for _, want := range []string{
		"-rwxr-xr-x root/root .* ./usr/bin/cmx-agent\n",
		"-rwxr-xr-x root/root .* ./usr/bin/cmxctl\n",
		"-rw-r--r-- root/root .* ./lib/systemd/system/cmx-agent.service\n",
		"-rw-r--r-- root/root .* ./usr/lib/sysusers.d/cmx-agent.conf\n",
		"-rw-r--r-- root/root .* ./etc/cmx-agent/agent.toml\n",
		"./usr/share/doc/cmx-agent/agent.toml.example\n",
		"./usr/share/doc/cmx-agent/README.md\n",
		"./usr/share/doc/cmx-agent/docs/operations.md\n", // README.md links to it as docs/operations.md
		"./usr/share/doc/cmx-agent/docs/brokers.md\n",    // operations.md links to it
		"./usr/share/doc/cmx-agent/copyright\n",
		"-rw-r--r-- root/root .* ./usr/share/doc/cmx-agent/THIRD-PARTY-NOTICES\n",
		"./usr/share/doc/cmx-agent/changelog.gz\n",
		"-rw-r--r-- root/root .* ./usr/share/man/man1/cmx-agent.1.gz\n",
		"-rw-r--r-- root/root .* ./usr/share/man/man1/cmxctl.1.gz\n",
		"-rw-r--r-- root/root .* ./usr/share/man/man5/cmx-agent.toml.5.gz\n",
		"-rw-r--r-- root/root .* ./usr/share/bash-completion/completions/cmx-agent\n",
		"-rw-r--r-- root/root .* ./usr/share/bash-completion/completions/cmxctl\n",
		"-rw-r--r-- root/root .* ./usr/share/zsh/vendor-completions/_cmx-agent\n",
		"-rw-r--r-- root/root .* ./usr/share/zsh/vendor-completions/_cmxctl\n",
	} {
		if !regexp.MustCompile(want).MatchString(list) {
			t.Errorf("deb contents lack %q:\n%s", want, list)
		}
	}
	ctrl := t.TempDir()
	command(t, "dpkg-deb", "-e", p.deb, ctrl)
	if b, _ := os.ReadFile(filepath.Join(ctrl, "conffiles")); string(b) != "/etc/cmx-agent/agent.toml\n" {
		t.Errorf("conffiles = %q, want /etc/cmx-agent/agent.toml", b)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		if fi, err := os.Stat(filepath.Join(ctrl, s)); err != nil || fi.Mode().Perm()&0o111 == 0 {
			t.Errorf("deb %s: %v, want an executable script", s, err)
		}
	}

	// The binaries are static and stamped.
	x := t.TempDir()
	command(t, "dpkg-deb", "-x", p.deb, x)
	for _, bin := range []string{"cmx-agent", "cmxctl"} {
		f, err := elf.Open(filepath.Join(x, "usr/bin", bin))
		if err != nil {
			t.Fatal(err)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s has an interpreter: not static", bin)
			}
		}
		f.Close()
		if out := command(t, filepath.Join(x, "usr/bin", bin), "version"); !strings.HasPrefix(out, bin+" 1.2.3 (commit ") {
			t.Errorf("%s version = %q, want version 1.2.3 stamped", bin, out)
		}
	}

	if _, err := exec.LookPath("rpm"); err != nil {
		t.Fatal("rpm is needed to inspect the .rpm: apt-get install -y rpm")
	}
	flags := command(t, "rpm", "-qp", "--qf", "[%{FILEMODES:perms} %{FILEFLAGS:fflags} %{FILEGROUPNAME} %{FILENAMES}\n]", p.rpm)
	for _, want := range []string{
		"-rwxr-xr-x  root /usr/bin/cmx-agent",
		"-rwxr-xr-x  root /usr/bin/cmxctl",
		"-rw-r----- cn cmx-agent /etc/cmx-agent/agent.toml", // config, noreplace
		"-rw-r--r--  root /usr/lib/systemd/system/cmx-agent.service",
		"-rw-r--r--  root /usr/lib/sysusers.d/cmx-agent.conf",
		"-rw-r--r-- d root /usr/share/man/man1/cmx-agent.1.gz",
		"-rw-r--r-- d root /usr/share/man/man1/cmxctl.1.gz",
		"-rw-r--r-- d root /usr/share/man/man5/cmx-agent.toml.5.gz",
		"-rw-r--r--  root /usr/share/bash-completion/completions/cmx-agent",
		"-rw-r--r--  root /usr/share/bash-completion/completions/cmxctl",
		"-rw-r--r--  root /usr/share/zsh/site-functions/_cmx-agent",
		"-rw-r--r--  root /usr/share/zsh/site-functions/_cmxctl",
		"-rw-r--r-- l root /usr/share/licenses/cmx-agent/LICENSE",
		"-rw-r--r-- l root /usr/share/licenses/cmx-agent/THIRD-PARTY-NOTICES",
	} {
		if !strings.Contains(flags, want+"\n") {
			t.Errorf("rpm files lack %q:\n%s", want, flags)
		}
	}
	scripts := command(t, "rpm", "-qp", "--scripts", p.rpm)
	for _, want := range []string{"preinstall scriptlet", "postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet", "try-restart cmx-agent.service"} {
		if !strings.Contains(scripts, want) {
			t.Errorf("rpm scripts lack %q:\n%s", want, scripts)
		}
	}
	if got := command(t, "rpm", "-qp", "--recommends", p.rpm); got != "bash-completion\n" {
		t.Errorf("rpm recommends %q, want bash-completion (the completions need it)", got)
	}
	if got := command(t, "rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{ARCH}", p.rpm); got != "cmx-agent 1.2.3 x86_64" {
		t.Errorf("rpm header: %q", got)
	}
}

func TestPackages_CarryTheLicenceAndTheNoticesOfEverythingLinked(t *testing.T) {
	needPackaging(t)
	repoRoot(t)
	p := buildPackages(t, "1.2.3")

	// deb: the machine-readable copyright file names Apache-2.0 and points at Debian's copy of
	// the text (lintian checks the form; this checks what it says).
	x := t.TempDir()
	command(t, "dpkg-deb", "-x", p.deb, x)
	copyright, err := os.ReadFile(filepath.Join(x, "usr/share/doc/cmx-agent/copyright"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n",
		"\nFiles: \\*\nCopyright: .+\nLicense: Apache-2.0\n",
		"\nLicense: Apache-2.0\n Licensed under the Apache License, Version 2.0",
		`"/usr/share/common-licenses/Apache-2.0"`,
	} {
		if !regexp.MustCompile(want).Match(copyright) {
			t.Errorf("deb copyright lacks %q:\n%s", want, copyright)
		}
	}

	// rpm: the SPDX identifier in the header and the full text as a %license file.
	if got := command(t, "rpm", "-qp", "--qf", "%{LICENSE}", p.rpm); got != "Apache-2.0" {
		t.Errorf("rpm License = %q, want Apache-2.0", got)
	}
	if got, want := command(t, "rpm", "-qp", "--licensefiles", p.rpm), "/usr/share/licenses/cmx-agent/LICENSE\n/usr/share/licenses/cmx-agent/THIRD-PARTY-NOTICES\n"; got != want {
		t.Errorf("rpm licence files = %q, want %q", got, want)
	}
	rpmLicence := extractRPMFile(t, p.rpm, "./usr/share/licenses/cmx-agent/LICENSE")
	root, err := os.ReadFile("LICENSE")
	if err != nil {
		t.Fatal(err)
	}
	if string(rpmLicence) != string(root) || !strings.Contains(string(root), "Apache License\n                           Version 2.0, January 2004") {
		t.Errorf("the rpm's LICENSE is not the repository's Apache License 2.0 text")
	}

	// The notices, checked against the build information of the binaries in the packages: every
	// module they link, and the Go runtime, is named with its version and followed by its
	// licence text.
	debNotices, err := os.ReadFile(filepath.Join(x, "usr/share/doc/cmx-agent/THIRD-PARTY-NOTICES"))
	if err != nil {
		t.Fatal(err)
	}
	deb := string(debNotices)
	rpm := string(extractRPMFile(t, p.rpm, "./usr/share/licenses/cmx-agent/THIRD-PARTY-NOTICES"))
	if deb != rpm {
		t.Errorf("the deb's and the rpm's notices differ")
	}
	if !strings.Contains(string(copyright), "/usr/share/doc/cmx-agent/THIRD-PARTY-NOTICES") {
		t.Errorf("the deb's copyright file does not point at the notices:\n%s", copyright)
	}
	// Each section is "== <module> <version>" and then "-- <licence file>" and its text.
	sections := map[string]string{}
	for _, sec := range strings.Split(deb, "\n== ")[1:] {
		head, body, _ := strings.Cut(sec, "\n")
		sections[head] = body
	}
	for _, bin := range []string{"usr/bin/cmx-agent", "usr/bin/cmxctl"} {
		bi, err := buildinfo.ReadFile(filepath.Join(x, bin))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"Go standard library and runtime " + bi.GoVersion}
		for _, d := range bi.Deps {
			if d.Replace != nil {
				d = d.Replace
			}
			want = append(want, d.Path+" "+d.Version)
		}
		if len(want) < 5 {
			t.Fatalf("%s links only %v: build information missing?", bin, want)
		}
		for _, w := range want {
			body, ok := sections[w]
			if !ok {
				t.Errorf("the notices lack %s, linked into %s", w, bin)
				continue
			}
			if !strings.Contains(body, "\n-- ") || len(body) < 200 {
				t.Errorf("the notice of %s carries no licence text:\n%s", w, body)
			}
		}
	}
	// paho is under the EPL 2.0 and the EDL 1.0; the Go runtime under Go's BSD licence.
	for _, want := range []string{"Eclipse Public License", "Eclipse Distribution License", "Copyright 2009 The Go Authors"} {
		if !strings.Contains(deb, want) {
			t.Errorf("the notices lack %q", want)
		}
	}
}

// extractRPMFile returns one file of an rpm, read with rpm2archive (part of rpm) and tar.
func extractRPMFile(t *testing.T, rpm, path string) []byte {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", `rpm2archive -n - <"$1" | tar -xf - "$2"`, "sh", rpm, path)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rpm2archive | tar %s: %v\n%s", path, err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, path))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPackages_LintianClean(t *testing.T) {
	needPackaging(t)
	repoRoot(t)
	if _, err := exec.LookPath("lintian"); err != nil {
		t.Fatal("lintian is needed: apt-get install -y lintian")
	}
	p := buildPackages(t, "1.2.3")
	out, err := exec.Command("lintian", "--fail-on", "error,warning", p.deb).CombinedOutput()
	text := strings.TrimSpace(strings.ReplaceAll(string(out), "running with root privileges is not recommended!", ""))
	if err != nil || text != "" {
		t.Errorf("lintian (%v):\n%s", err, out)
	}
}

func TestDeb_InstallUpgradeRemovePurge(t *testing.T) {
	needPackaging(t)
	if os.Geteuid() != 0 {
		t.Skip("dpkg in a private overlay of / needs root")
	}
	repoRoot(t)
	old := buildPackages(t, "0.0.1")
	cur := buildPackages(t, "0.0.2")
	out, err := exec.Command("packaging/dpkg-test.sh", old.deb, cur.deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-test.sh: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "dpkg-test: man cmx-agent, man cmxctl, man 5 cmx-agent.toml and the completions work") ||
		!strings.Contains(string(out), "dpkg-test: install, upgrade (modified agent.toml kept), remove, purge: ok") {
		t.Errorf("dpkg-test.sh output:\n%s", out)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
	os.Exit(code)
}
