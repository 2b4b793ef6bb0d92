// Package watch follows one file through its versions, for `cmx-agent watch`: local apps and
// scripts that want to act when the agent puts a new configuration in place.
package watch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Version is one content of the file.
type Version struct {
	Time   time.Time // when it was seen
	Size   int64
	SHA256 string // hex
	// Initial marks the content the file had when Watch started, which is not a change; a file
	// absent at the start has no initial version, so its first content is a change.
	Initial bool
}

// String is the line `cmx-agent watch` prints: time (RFC 3339, UTC), size in bytes, sha256.
func (v Version) String() string {
	return fmt.Sprintf("%s %d %s", v.Time.UTC().Format(time.RFC3339Nano), v.Size, v.SHA256)
}

// Options tune Watch; zero values are defaults.
type Options struct {
	// Debounce gathers the events of one replacement (default 200ms).
	Debounce time.Duration
	// Retry is how often a folder that is missing is looked for again (default 500ms).
	Retry time.Duration
	// Warn receives notes for people (the file is absent, a read failed).
	Warn func(msg string)
}

// Watch calls onVersion with the file's content at the start (if it exists) and then with each new
// content, until ctx ends. A content equal to the last one reported is not a new version. It watches
// the folder, so atomic replacements (rename over the file), the file's deletion and re-creation,
// and even the folder's removal and return are followed. The content is read from one open file
// and read again if the file changed during the read, so a version is never a partial file when
// writers replace the file atomically.
func Watch(ctx context.Context, path string, opt Options, onVersion func(Version)) error {
	opt = opt.withDefaults()
	// fsnotify names events by the folder as added joined with the file's name: for "f.txt" that is
	// "./f.txt", which matches no relative name. An absolute path makes both sides the same.
	named := path
	path, err := filepath.Abs(named)
	if err != nil {
		return fmt.Errorf("watch %s: %w", named, err)
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	defer fw.Close()
	w := &watcher{path: path, dir: filepath.Dir(path), opt: opt, onVersion: onVersion, fw: fw, initial: true}
	w.watching = fw.Add(w.dir) == nil
	w.check()

	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	retry := time.NewTicker(opt.Retry)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-retry.C:
			if !w.watching && fw.Add(w.dir) == nil {
				w.watching = true
				debounce.Reset(opt.Debounce)
			}
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			if w.concerns(ev) {
				debounce.Reset(opt.Debounce)
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			opt.Warn(fmt.Sprintf("watch %s: %v", path, err))
			debounce.Reset(opt.Debounce)
		case <-debounce.C:
			w.check()
		}
	}
}

func (opt Options) withDefaults() Options {
	if opt.Debounce <= 0 {
		opt.Debounce = 200 * time.Millisecond
	}
	if opt.Retry <= 0 {
		opt.Retry = 500 * time.Millisecond
	}
	if opt.Warn == nil {
		opt.Warn = func(string) {}
	}
	return opt
}

// watcher is one Watch's state; only its loop touches it.
type watcher struct {
	path, dir string
	opt       Options
	onVersion func(Version)
	fw        *fsnotify.Watcher
	last      string // sha256 of the last version reported
	absent    bool   // absence already noted
	watching  bool   // the folder is watched
	initial   bool   // the next check is the one at the start
}

// check reads the file and reports it when it is a new version.
func (w *watcher) check() {
	first := w.initial
	w.initial = false
	v, err := read(w.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !w.absent {
			w.opt.Warn(w.path + ": absent; waiting for it")
			w.absent = true
		}
		return
	case err != nil:
		w.opt.Warn(fmt.Sprintf("%s: %v", w.path, err))
		return
	}
	w.absent = false
	if v.SHA256 != w.last {
		w.last = v.SHA256
		v.Initial = first
		w.onVersion(v)
	}
}

// concerns reports whether ev may have changed the file: an event of the file itself, or the
// folder's removal (which also stops the folder's watch until it is back).
func (w *watcher) concerns(ev fsnotify.Event) bool {
	switch {
	case ev.Name == w.path:
		return true
	case ev.Name == w.dir && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)):
		_ = w.fw.Remove(w.dir)
		w.watching = false
		return true
	}
	return false
}

// read hashes the file at path from one open descriptor; if the name points to another file, or the
// file grew or shrank, by the end of the read, it reads again (a writer that replaces in place).
func read(path string) (Version, error) {
	for attempt := 0; ; attempt++ {
		v, stable, err := readOnce(path)
		if err != nil || stable || attempt == 10 {
			return v, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readOnce(path string) (Version, bool, error) {
	// O_NONBLOCK: a FIFO put at the path must not stall the watch until a writer comes.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return Version{}, false, err
	}
	defer f.Close()
	var before syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &before); err != nil {
		return Version{}, false, err
	}
	if before.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return Version{}, false, fmt.Errorf("not a regular file (mode %o): nothing to watch there", before.Mode&syscall.S_IFMT)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Version{}, false, err
	}
	var after, named syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &after); err != nil {
		return Version{}, false, err
	}
	stable := after.Size == n && after.Mtim == before.Mtim &&
		syscall.Stat(path, &named) == nil && named.Ino == after.Ino && named.Dev == after.Dev
	return Version{Time: time.Now(), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, stable, nil
}
