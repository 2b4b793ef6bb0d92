// Command packaging builds cmx-agent's release: static binaries for amd64, arm64 and armv7 and, for
// each, a .deb and an .rpm in dist/. Run it from the repository root:
//
//	go run ./packaging [-out dist] [-arch amd64,arm64,armv7] [-version V]
//
// The version and commit come from git (a tag vX.Y.Z gives X.Y.Z; otherwise 0.0.0~git<date>.<commit>)
// and are stamped into both binaries.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

// target is one architecture: how Go builds for it and what nfpm calls it.
type target struct {
	name   string // as given to -arch
	goarch string
	goarm  string
	nfpm   string // nfpm's name; it maps it to amd64/arm64/armhf (deb) and x86_64/aarch64/armv7hl (rpm)
}

var targets = []target{
	{"amd64", "amd64", "", "amd64"},
	{"arm64", "arm64", "", "arm64"},
	{"armv7", "arm", "7", "arm7"},
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "packaging:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("packaging", flag.ContinueOnError)
	out := fs.String("out", "dist", "output folder")
	archs := fs.String("arch", "amd64,arm64,armv7", "architectures, comma separated")
	version := fs.String("version", "", "package version (default: from git)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// packaging/ is a module of its own (go.work joins it to the root), so go.mod alone does not
	// tell the root from this folder.
	if _, err := os.Stat("cmd/cmx-agent"); err != nil {
		return fmt.Errorf("run from the repository root: %w", err)
	}
	commit := gitOut("rev-parse", "--short=12", "HEAD")
	if commit == "" {
		commit = "unknown"
	}
	if *version == "" {
		*version = gitVersion(commit)
	}
	mtime := commitTime()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	build, err := os.MkdirTemp("", "cmx-agent-packaging-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(build)

	changelog := filepath.Join(build, "changelog.gz")
	if err := writeChangelog(changelog, *version, commit, mtime); err != nil {
		return err
	}
	man, err := manPages(build, *version, mtime)
	if err != nil {
		return err
	}
	for _, name := range strings.Split(*archs, ",") {
		t, ok := findTarget(strings.TrimSpace(name))
		if !ok {
			return fmt.Errorf("unknown architecture %q (amd64, arm64, armv7)", name)
		}
		bin := filepath.Join(build, t.name)
		for _, cmd := range []string{"cmx-agent", "cmxctl"} {
			if err := goBuild(t, *version, commit, filepath.Join(bin, cmd), "./cmd/"+cmd); err != nil {
				return err
			}
		}
		if err := writeNotices(bin, filepath.Join(bin, "cmx-agent"), filepath.Join(bin, "cmxctl")); err != nil {
			return err
		}
		for _, format := range []string{"deb", "rpm"} {
			path, err := pack(format, t, *version, mtime, bin, changelog, man, *out)
			if err != nil {
				return fmt.Errorf("%s %s: %w", format, t.name, err)
			}
			fmt.Println(path)
		}
	}
	return nil
}

func findTarget(name string) (target, bool) {
	for _, t := range targets {
		if t.name == name {
			return t, true
		}
	}
	return target{}, false
}

func gitOut(args ...string) string {
	out, err := exec.Command("git", args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// gitVersion is X.Y.Z for a commit tagged vX.Y.Z, else a pre-release version that sorts before
// 0.0.0 in both dpkg and rpm, by date and commit.
func gitVersion(commit string) string {
	if tag := gitOut("describe", "--tags", "--exact-match", "--match", "v[0-9]*"); tag != "" {
		return strings.TrimPrefix(tag, "v")
	}
	date := gitOut("log", "-1", "--format=%cd", "--date=format:%Y%m%d%H%M%S")
	if date == "" {
		date = time.Now().UTC().Format("20060102150405")
	}
	v := "0.0.0~git" + date + "." + commit
	if gitOut("status", "--porcelain", "--untracked-files=no") != "" {
		v += ".dirty"
	}
	return v
}

// commitTime stamps every file in the packages, so the same commit gives the same packages.
func commitTime() time.Time {
	var sec int64
	if _, err := fmt.Sscan(gitOut("log", "-1", "--format=%ct"), &sec); err == nil && sec > 0 {
		return time.Unix(sec, 0).UTC()
	}
	return time.Now().UTC().Truncate(time.Second)
}

// goBuild builds with GOWORK=off: in the workspace, nfpm's requirements could raise the version of
// a module the agent shares with it, and the released binaries must be built from the root
// module's own go.mod and go.sum, as a plain `go build` in a checkout without go.work does.
func goBuild(t target, version, commit, out, pkg string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -buildid= -X main.version="+version+" -X main.commit="+commit,
		"-o", out, pkg)
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+t.goarch, "GOARM="+t.goarm)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s for %s: %v\n%s", pkg, t.name, err, b)
	}
	return nil
}

// writeChangelog writes the Debian-format changelog of a native package, compressed as policy
// wants it (gzip -9n: no name, no time).
func writeChangelog(path, version, commit string, when time.Time) error {
	text := fmt.Sprintf("cmx-agent (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- cmx-agent maintainers <maintainers@cmx-agent.invalid>  %s\n",
		version, commit, when.Format(time.RFC1123Z))
	return writeGzip(path, []byte(text))
}

// docDir is the packages' documentation folder.
const docDir = "/usr/share/doc/cmx-agent/"

// docPath is where the packages install the document at src in the repository: in the same layout,
// so that README.md's links into docs/ and the documents' links to each other all work.
func docPath(src string) string { return docDir + src }

// installedDocs are the documents the packages carry in docDir: the operator's guide and every
// document it links to, directly or through another, so that no link is dead on a gateway without
// network.
func installedDocs() []string {
	return []string{"README.md", "docs/operations.md", "docs/durability.md", "docs/brokers.md", "docs/apply.md",
		"docs/security.md", "docs/benchmarks.md", "docs/protocol.md"}
}

// pack writes one package and returns its path.
func pack(format string, t target, version string, mtime time.Time, bin, changelog string, man files.Contents, out string) (string, error) {
	exec := &files.ContentFileInfo{Mode: 0o755, MTime: mtime}
	doc := func() *files.ContentFileInfo { return &files.ContentFileInfo{Mode: 0o644, MTime: mtime} }
	unitDir := "/usr/lib/systemd/system/"
	if format == "deb" {
		unitDir = "/lib/systemd/system/" // where Debian 12's systemd and lintian expect units
	}
	contents := files.Contents{
		{Source: filepath.Join(bin, "cmx-agent"), Destination: "/usr/bin/cmx-agent", FileInfo: exec},
		{Source: filepath.Join(bin, "cmxctl"), Destination: "/usr/bin/cmxctl", FileInfo: exec},
		{Source: "systemd/cmx-agent.service", Destination: unitDir + "cmx-agent.service", FileInfo: doc()},
		{Source: "systemd/cmx-agent.sysusers", Destination: "/usr/lib/sysusers.d/cmx-agent.conf", FileInfo: doc()},
		{Source: "examples/agent.toml", Destination: docDir + "agent.toml.example", FileInfo: doc()},
	}
	for _, src := range installedDocs() {
		contents = append(contents, &files.Content{Source: src, Destination: docPath(src), FileInfo: doc()})
	}
	// The configuration may name credentials: 0640 root:cmx-agent. Debian policy wants 0644 in the
	// archive, so there postinst narrows it once the group exists; rpm creates the user in %pre
	// and can ship the final mode.
	conf := &files.Content{Source: "packaging/agent.toml", Destination: "/etc/cmx-agent/agent.toml", Type: files.TypeConfigNoReplace,
		FileInfo: &files.ContentFileInfo{Mode: 0o640, Group: "cmx-agent", MTime: mtime}}
	if format == "deb" {
		conf.FileInfo = doc()
	}
	contents = append(contents, conf)
	for _, m := range man { // copies: nfpm may change what it is given, and both formats use them
		c, fi := *m, *m.FileInfo
		c.FileInfo = &fi
		if format == "rpm" {
			c.Type = files.TypeRPMDoc // as rpmbuild marks man pages: rpm --excludedocs leaves them out
		}
		contents = append(contents, &c)
	}
	contents = append(contents, completions(format, mtime)...)
	// The licence: Debian wants the machine-readable copyright file, which names Apache-2.0 and
	// points at the system's copy of its text; rpm distributions want the text itself as a %license
	// file under /usr/share/licenses. Both carry the notices of the code linked into the binaries
	// (notices.go).
	if format == "deb" {
		contents = append(contents,
			&files.Content{Source: "packaging/copyright", Destination: "/usr/share/doc/cmx-agent/copyright", FileInfo: doc()},
			&files.Content{Source: filepath.Join(bin, noticesName), Destination: "/usr/share/doc/cmx-agent/" + noticesName, FileInfo: doc()},
			&files.Content{Source: changelog, Destination: "/usr/share/doc/cmx-agent/changelog.gz", FileInfo: doc()},
			&files.Content{Source: "packaging/lintian-overrides", Destination: "/usr/share/lintian/overrides/cmx-agent", FileInfo: doc()},
		)
	} else {
		contents = append(contents,
			&files.Content{Source: "LICENSE", Destination: "/usr/share/licenses/cmx-agent/LICENSE", Type: files.TypeRPMLicense, FileInfo: doc()},
			&files.Content{Source: filepath.Join(bin, noticesName), Destination: "/usr/share/licenses/cmx-agent/" + noticesName, Type: files.TypeRPMLicense, FileInfo: doc()},
		)
	}
	info := &nfpm.Info{
		Name:          "cmx-agent",
		Arch:          t.nfpm,
		Platform:      "linux",
		Version:       version,
		VersionSchema: "none",
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    "cmx-agent maintainers <maintainers@cmx-agent.invalid>",
		Description: "Kaa configuration management agent for IoT gateways\n" +
			"cmx-agent keeps configuration files on a gateway in step with a Kaa server\n" +
			"over MQTT (Configuration Management Extension, dialects 3/CMX and 7/CMP):\n" +
			"atomic, durable file replacement, confirmations stored until delivered,\n" +
			"and a systemd service with watchdog. Includes cmxctl, the server-side\n" +
			"companion for tests and demos.",
		Vendor:   "cmx-agent",
		Homepage: "https://github.com/cmx-agent/cmx-agent",
		License:  "Apache-2.0", // SPDX identifier: the deb's and the rpm's License field
		MTime:    mtime,
		Overridables: nfpm.Overridables{
			Contents: contents,
			Umask:    0o022,
			// The completions in /usr/share/bash-completion need it to load; apt installs
			// recommended packages by default, and --no-install-recommends leaves it out.
			Recommends: []string{"bash-completion"},
		},
	}
	switch format {
	case "deb":
		info.Scripts = nfpm.Scripts{
			PostInstall: "packaging/deb/postinst",
			PreRemove:   "packaging/deb/prerm",
			PostRemove:  "packaging/deb/postrm",
		}
		info.Depends = []string{"init-system-helpers (>= 1.54~)", "passwd"}
	case "rpm":
		info.Scripts = nfpm.Scripts{
			PreInstall:  "packaging/rpm/pre.sh",
			PostInstall: "packaging/rpm/post.sh",
			PreRemove:   "packaging/rpm/preun.sh",
			PostRemove:  "packaging/rpm/postun.sh",
		}
		info.RPM.Group = "System Environment/Daemons"
		info.RPM.Summary = "Kaa configuration management agent for IoT gateways"
	}
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return "", err
	}
	pkg, err := nfpm.Get(format)
	if err != nil {
		return "", err
	}
	path := filepath.Join(out, pkg.ConventionalFileName(info))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	info.Target = path
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(path)
		return "", err
	}
	return path, f.Close()
}
