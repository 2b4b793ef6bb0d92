// Package bundle writes cmx-agent's support bundle (`cmx-agent bundle`): a .tar.gz an operator
// attaches to a ticket, with what it takes to understand a gateway's state and none of its secrets.
//
// Secrets are kept out in layers. The configuration file is parsed and written again with the keys
// the config package knows, server URL passwords removed and no comments. Files the configuration
// names (password_file, key_file, cert_file, ca_file, templates) are described by path, mode, owner
// and size and never copied; the password file alone is read, only so that its content can be
// scrubbed. Every file goes through one scrubber before it enters the archive, which replaces the
// password file's content, URL passwords and PEM private keys wherever they appear (the agent's
// answers, the journal, problems that quote a value).
package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Options say what to collect and where to write it.
type Options struct {
	ConfigPath string // the agent's configuration file
	// Socket is the running agent's socket; "" = the one the configuration names (or the default).
	Socket       string
	Out          string // the archive to write
	WithOutputs  bool   // copy the outputs' content too, not only their hashes
	JournalLines int    // last lines of the unit's journal; 0 = none
	Version      string // the binary's version line, as `cmx-agent version` prints it
	// Journal returns the unit's last n journal lines; nil runs journalctl. It returns
	// ErrNoJournal where there is no journalctl.
	Journal func(ctx context.Context, n int) ([]byte, error)
	// StatusTimeout bounds the question to the running agent; 0 = 5 s.
	StatusTimeout time.Duration
	Now           func() time.Time // nil = time.Now
}

// fileMode is the mode of every file in the archive and of the archive itself: the bundle
// describes the gateway's set-up and is for root and the ticket only.
const fileMode = 0o600

// Write collects the bundle and writes it to o.Out. Parts that cannot be collected (no agent
// running, an invalid configuration, no journal) are said so in the archive; only a failure to
// write the archive is an error. The archive appears whole or not at all: it is written to a
// temporary file beside o.Out and renamed.
func Write(ctx context.Context, o Options) error {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Journal == nil {
		o.Journal = journalctl
	}
	if o.StatusTimeout == 0 {
		o.StatusTimeout = 5 * time.Second
	}
	b := &builder{opt: o, now: o.Now().UTC()}
	b.collect(ctx)
	return b.write()
}

type file struct {
	name string
	data []byte
}

// builder gathers the files of one bundle.
type builder struct {
	opt   Options
	now   time.Time
	scrub *scrubber
	files []file
	notes []string // what was left out or could not be collected, for README.txt
}

// add puts a file in the bundle, scrubbed: every file goes through here.
func (b *builder) add(name string, data []byte) {
	b.files = append(b.files, file{name: name, data: b.scrub.clean(data)})
}

func (b *builder) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func (b *builder) collect(ctx context.Context) {
	cf := readConfig(b.opt.ConfigPath)
	secrets, err := cf.secrets()
	b.scrub = newScrubber(secrets)
	switch {
	// Never copied anyway; but what the agent or the journal may quote of it cannot be removed.
	case errors.Is(err, fs.ErrPermission):
		b.note("scrubbing the password file's content: %v (run the bundle as root)", err)
	case err != nil:
		b.note("scrubbing the password file's content: %v", err)
	}
	b.addVersion()
	b.addConfig(cf)
	v := cf.view()
	if b.opt.Socket != "" {
		v.socket = b.opt.Socket
	}
	b.addFiles(v)
	st, ok := b.addStatus(ctx, v)
	b.addEndpoints(st, ok)
	b.addDatabase(v)
	b.addOutputs(v, st, ok)
	b.addJournal(ctx)
	b.addReadme()
}

// write writes the archive: gzip'd tar, every file in one folder named after the archive.
func (b *builder) write() error {
	base := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(b.opt.Out), ".gz"), ".tar")
	base = strings.TrimSuffix(base, ".tgz")
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	dir := &tar.Header{Typeflag: tar.TypeDir, Name: base + "/", Mode: 0o700, ModTime: b.now, Format: tar.FormatPAX}
	if err := tw.WriteHeader(dir); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	for _, f := range b.files {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: base + "/" + f.name, Mode: fileMode, Size: int64(len(f.data)), ModTime: b.now, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write bundle: %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return fmt.Errorf("write bundle: %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	return writeFileAtomic(b.opt.Out, buf.Bytes())
}

// writeFileAtomic writes data to path with mode 0600, whatever the umask and whatever a file
// already at path had.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*") // 0600
	if err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename there is nothing left to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write bundle %s: %w", path, err)
	}
	if err := tmp.Chmod(fileMode); err != nil {
		tmp.Close()
		return fmt.Errorf("write bundle %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write bundle %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	return nil
}

func (b *builder) addReadme() {
	var s strings.Builder
	fmt.Fprintf(&s, "cmx-agent support bundle, made %s\n\n", b.now.Format(time.RFC3339))
	s.WriteString("Files:\n")
	for _, f := range b.files {
		fmt.Fprintf(&s, "  %s\n", f.name)
	}
	s.WriteString(`
Left out on purpose: the content of password_file, key_file, cert_file, ca_file and templates
(only their paths, modes and owners are in files.txt), passwords in server URLs, comments and
unknown keys of the configuration file, and the outputs' content unless --with-outputs was given.
`)
	if len(b.notes) > 0 {
		s.WriteString("\nNot collected:\n")
		for _, n := range b.notes {
			fmt.Fprintf(&s, "  - %s\n", n)
		}
	}
	b.add("README.txt", []byte(s.String()))
}

// File is one file of a bundle as Read returns it.
type File struct {
	Mode int64 // permission bits in the archive
	Data []byte
}

// Read returns the regular files of a bundle by name, without the folder they are in: what a test
// or a tool needs to look inside one.
func Read(path string) (map[string]File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read bundle: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("read bundle %s: %w", path, err)
	}
	tr := tar.NewReader(zr)
	files := map[string]File{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read bundle %s: %w", path, err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("read bundle %s: %s: %w", path, h.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			_, name, _ := strings.Cut(h.Name, "/")
			files[name] = File{Mode: h.Mode, Data: data}
		}
	}
}
