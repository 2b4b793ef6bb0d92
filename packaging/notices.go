package main

import (
	"bytes"
	"debug/buildinfo"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// The binaries are static: besides cmx-agent's own code they carry the Go runtime and standard
// library and every module they import, and most of those licences (BSD, MIT, EPL/EDL) require
// their notice to travel with any copy, binaries included. So the packages ship the notices of
// exactly what was linked, read from the binaries' own build information (not from go.mod, which
// also lists test-only and tool modules), with each licence file as its module ships it.

// noticesName is the file's name in the packages: /usr/share/doc/cmx-agent/NAME in the deb (not
// compressed: Debian policy wants copyright information readable as it is, like the copyright file),
// /usr/share/licenses/cmx-agent/NAME in the rpm.
const noticesName = "THIRD-PARTY-NOTICES"

// linked is one body of code linked into a binary.
type linked struct {
	Path    string // module path, or "std" for the Go standard library and runtime
	Version string
	Dir     string // the folder of a module replaced by a local one; "" otherwise
}

func (m linked) name() string {
	if m.Path == "std" {
		return "Go standard library and runtime"
	}
	return m.Path
}

// writeNotices writes THIRD-PARTY-NOTICES into dir for the binaries there.
func writeNotices(dir string, bins ...string) error {
	text, err := notices(bins...)
	if err != nil {
		return fmt.Errorf("third-party notices: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, noticesName), text, 0o644)
}

// linkedModules returns what the binaries were built from, besides cmx-agent's own module, sorted
// by path, with the Go toolchain first.
func linkedModules(bins ...string) ([]linked, error) {
	goVersion, err := goEnv("GOVERSION")
	if err != nil {
		return nil, err
	}
	seen := map[linked]bool{}
	var out []linked
	for _, bin := range bins {
		bi, err := buildinfo.ReadFile(bin)
		if err != nil {
			return nil, fmt.Errorf("read build information of %s: %w", bin, err)
		}
		if goVersion != bi.GoVersion {
			return nil, fmt.Errorf("%s was built with %s, but go env says %q: the standard library's licence would come from another toolchain", bin, bi.GoVersion, goVersion)
		}
		mods := []linked{{Path: "std", Version: bi.GoVersion}}
		for _, d := range bi.Deps {
			switch {
			case d.Replace != nil && d.Replace.Version == "": // replaced by a folder
				dir, err := filepath.Abs(d.Replace.Path)
				if err != nil {
					return nil, err
				}
				mods = append(mods, linked{Path: d.Path, Version: "(local " + d.Replace.Path + ")", Dir: dir})
			case d.Replace != nil:
				mods = append(mods, linked{Path: d.Replace.Path, Version: d.Replace.Version})
			default:
				mods = append(mods, linked{Path: d.Path, Version: d.Version})
			}
		}
		for _, m := range mods {
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	slices.SortFunc(out, func(a, b linked) int {
		if (a.Path == "std") != (b.Path == "std") {
			if a.Path == "std" {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Path+" "+a.Version, b.Path+" "+b.Version)
	})
	return out, nil
}

// moduleDirs finds each module's folder in the module cache (go mod download reads the cache
// first, so a tree that has just built the binaries needs no network), and the toolchain's root
// for "std".
func moduleDirs(mods []linked) (map[linked]string, error) {
	dirs := map[linked]string{}
	var args []string
	for _, m := range mods {
		if m.Dir != "" {
			dirs[m] = m.Dir
			continue
		}
		if m.Path == "std" {
			root, err := goEnv("GOROOT")
			if err != nil {
				return nil, err
			}
			dirs[m] = root
			continue
		}
		args = append(args, m.Path+"@"+m.Version)
	}
	if len(args) == 0 {
		return dirs, nil
	}
	cmd := exec.Command("go", append([]string{"mod", "download", "-json"}, args...)...)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download: %v\n%s%s", err, out, stderr.Bytes())
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var d struct{ Path, Version, Dir, Error string }
		if err := dec.Decode(&d); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go mod download: %w", err)
		}
		if d.Error != "" || d.Dir == "" {
			return nil, fmt.Errorf("go mod download %s@%s: %s", d.Path, d.Version, d.Error)
		}
		dirs[linked{Path: d.Path, Version: d.Version}] = d.Dir
	}
	return dirs, nil
}

func goEnv(name string) (string, error) {
	cmd := exec.Command("go", "env", name)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %w", name, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// licenceFiles are the files at the top of dir that carry its terms, sorted.
func licenceFiles(dir string) ([]string, error) {
	// Upper-cased name prefixes; EPL- and EDL- are the texts paho ships beside its LICENSE.
	prefixes := []string{"LICENSE", "LICENCE", "COPYING", "NOTICE", "PATENTS", "EPL-", "EDL-"}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		name := strings.ToUpper(e.Name())
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(name, p) }) {
			continue
		}
		// Stat, not the entry's type: a distribution's Go links its LICENSE from elsewhere.
		if fi, err := os.Stat(filepath.Join(dir, e.Name())); err == nil && fi.Mode().IsRegular() {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out, nil
}

// notices returns the text of THIRD-PARTY-NOTICES for the binaries bins. A linked module without
// a licence file is an error: it could not be shipped in good conscience.
func notices(bins ...string) ([]byte, error) {
	mods, err := linkedModules(bins...)
	if err != nil {
		return nil, err
	}
	dirs, err := moduleDirs(mods)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("Third-party notices for cmx-agent and cmxctl\n\n" +
		"cmx-agent is licensed under the Apache License, Version 2.0. Its binaries are built with the Go\n" +
		"toolchain and statically link the Go standard library and the modules below, each under its\n" +
		"own licence, whose files follow as the module ships them.\n\n")
	for _, m := range mods {
		fmt.Fprintf(&b, "  %s %s\n", m.name(), m.Version)
	}
	for _, m := range mods {
		dir := dirs[m]
		files, err := licenceFiles(dir)
		if err != nil {
			return nil, fmt.Errorf("licence of %s %s: %w", m.Path, m.Version, err)
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("%s %s (%s) has no LICENSE, COPYING or NOTICE file", m.Path, m.Version, dir)
		}
		fmt.Fprintf(&b, "\n%s\n== %s %s\n", strings.Repeat("=", 78), m.name(), m.Version)
		for _, f := range files {
			text, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&b, "\n-- %s\n\n%s", f, text)
			if !bytes.HasSuffix(text, []byte("\n")) {
				b.WriteByte('\n')
			}
		}
	}
	return b.Bytes(), nil
}
