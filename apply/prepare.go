package apply

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Pending is a new version of a file written durably under a temporary name in the target's folder
// but not yet in place: it can be checked (a validate command reads it at Path) before Commit puts it
// in place or Abort discards it. Exactly one of Commit and Abort must be called.
type Pending struct {
	target string
	dir    string
	tmp    string
	opt    Options
	moved  bool
}

// Prepare does the first half of WriteFile: parent folders, temporary file, data, mode, fsync, close.
// The target is not touched. On error nothing is left behind.
func Prepare(path string, data []byte, opt Options) (*Pending, error) {
	p, err := prepare(path, data, opt)
	if err != nil {
		return nil, fmt.Errorf("replace %s: %w", path, err)
	}
	return p, nil
}

func prepare(path string, data []byte, opt Options) (*Pending, error) {
	perm := opt.Perm
	if perm == 0 {
		perm = defaultPerm
	}
	if perm&^validPerm != 0 {
		return nil, fmt.Errorf("mode %v has bits chmod cannot set: %w", opt.Perm, fs.ErrInvalid)
	}
	dir, base := filepath.Split(path)
	if base == "" || base == "." || base == ".." {
		return nil, fmt.Errorf("not a file name: %w", fs.ErrInvalid)
	}
	if dir == "" {
		dir = "."
	}
	dir = filepath.Clean(dir)
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	f, tmp, err := createTemp(dir, base)
	if err != nil {
		return nil, err
	}
	if err := writeSyncClose(f, data, perm); err != nil {
		_ = os.Remove(tmp)
		return nil, err
	}
	step(opt, StepSynced)
	return &Pending{target: path, dir: dir, tmp: tmp, opt: opt}, nil
}

// Path is the temporary file holding the new version.
func (p *Pending) Path() string { return p.tmp }

// Commit renames the new version over the target and fsyncs the folder, as WriteFile does. If the
// rename fails the temporary file is removed and the target is untouched.
func (p *Pending) Commit() error {
	if err := os.Rename(p.tmp, p.target); err != nil {
		_ = os.Remove(p.tmp)
		return fmt.Errorf("replace %s: %w", p.target, err)
	}
	p.moved = true
	if err := SyncDir(p.dir); err != nil {
		return fmt.Errorf("replace %s: %w", p.target, err)
	}
	step(p.opt, StepRenamed)
	return nil
}

// Renamed reports whether Commit got as far as the rename: after a Commit error it tells whether
// the target holds the new version (though perhaps not durably) or is untouched.
func (p *Pending) Renamed() bool { return p.moved }

// Abort removes the temporary file; the target was never touched.
func (p *Pending) Abort() {
	_ = os.Remove(p.tmp)
}
