package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/goreleaser/nfpm/v2/files"
)

// manSources is the folder of the manual pages' Markdown sources, one file per page named
// PAGE.SECTION.md (cmx-agent.1.md, cmx-agent.toml.5.md). The commands' and the config package's
// tests check them against the real flags and keys.
const manSources = "docs/man"

// manuals names each section's manual in the pages' title line.
var manuals = map[string]string{"1": "User Commands", "5": "File Formats"}

// renderMan converts one Markdown source to roff with go-md2man, with the title line (.TH) made
// here from the file name, the version and the date, so that the sources carry no version.
func renderMan(src []byte, page, section, version string, date time.Time) []byte {
	title := fmt.Sprintf("# %s %s %q %q %q\n\n", strings.ToUpper(page), section, date.Format("January 2006"), "cmx-agent "+version, manuals[section])
	return md2man.Render(append([]byte(title), src...))
}

// manPages renders every page into dir, gzipped as Debian policy wants (gzip -9n), and returns
// them as package contents under /usr/share/man.
func manPages(dir, version string, mtime time.Time) (files.Contents, error) {
	srcs, err := filepath.Glob(filepath.Join(manSources, "*.md"))
	if err != nil || len(srcs) == 0 {
		return nil, fmt.Errorf("man pages: no sources in %s (%v)", manSources, err)
	}
	var contents files.Contents
	for _, src := range srcs {
		name := strings.TrimSuffix(filepath.Base(src), ".md") // cmx-agent.1
		dot := strings.LastIndex(name, ".")
		page, section := name[:dot], name[dot+1:]
		if _, ok := manuals[section]; dot < 0 || !ok {
			return nil, fmt.Errorf("man pages: %s: want PAGE.SECTION.md with section 1 or 5", src)
		}
		md, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("man pages: %w", err)
		}
		out := filepath.Join(dir, name+".gz")
		if err := writeGzip(out, renderMan(md, page, section, version, mtime)); err != nil {
			return nil, fmt.Errorf("man pages: %w", err)
		}
		contents = append(contents, &files.Content{Source: out, Destination: "/usr/share/man/man" + section + "/" + name + ".gz",
			FileInfo: &files.ContentFileInfo{Mode: 0o644, MTime: mtime}})
	}
	return contents, nil
}

// writeGzip writes data compressed as `gzip -9n` does: best compression, no name, no time.
func writeGzip(path string, data []byte) error {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// completions are the shell completion scripts and where each format's distributions look for
// them: bash-completion's folder everywhere, zsh's vendor-completions on Debian and
// site-functions on rpm systems.
func completions(format string, mtime time.Time) files.Contents {
	zsh := "/usr/share/zsh/site-functions/"
	if format == "deb" {
		zsh = "/usr/share/zsh/vendor-completions/"
	}
	var contents files.Contents
	for _, cmd := range []string{"cmx-agent", "cmxctl"} {
		contents = append(contents,
			&files.Content{Source: "completion/" + cmd + ".bash", Destination: "/usr/share/bash-completion/completions/" + cmd,
				FileInfo: &files.ContentFileInfo{Mode: 0o644, MTime: mtime}},
			&files.Content{Source: "completion/_" + cmd, Destination: zsh + "_" + cmd,
				FileInfo: &files.ContentFileInfo{Mode: 0o644, MTime: mtime}})
	}
	return contents
}
