// Package apply puts the agent's output files in place.
//
// An output file is replaced atomically and durably: a reader sees the old bytes or the new ones,
// never a mix or a truncated file, and once WriteFile returns nil the new bytes are under the
// output's name even after a power loss. A crash part-way leaves the old file and at most a
// temporary file beside it, which RemoveTemps finds and deletes at the next start.
package apply

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// The points at which WriteFile calls Options.Step, in this order.
const (
	// StepSynced: the temporary file holds the new bytes and mode durably and is closed; the
	// target has not been touched yet.
	StepSynced = "synced"
	// StepRenamed: the target holds the new bytes and the rename has been made durable.
	StepRenamed = "renamed"
)

// Options for WriteFile.
type Options struct {
	// Perm is the mode of the file: permission bits, optionally with setuid, setgid and sticky.
	// 0 means 0644. It is set with chmod, so the process's umask does not narrow it.
	Perm fs.FileMode
	// Step, when set, is called with StepSynced and StepRenamed so that crash tests can stop the
	// writer at a known point. Cleanup is done explicitly rather than deferred, so a Step that
	// exits the process or the goroutine leaves the files exactly as a crash there would.
	Step func(step string)
}

const (
	defaultPerm = 0o644
	// dirPerm is set on created folders with chmod: the output is read by other programs, often as
	// other users, and a restrictive umask must not hide it from them.
	dirPerm = 0o755
	// validPerm is what chmod can set; anything else in Options.Perm is a caller's mistake.
	validPerm = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

	// A temporary file for target "name" is ".name.cmx-tmp-" followed by randLen hex digits: hidden,
	// clearly the agent's, and specific enough that RemoveTemps never matches anything else.
	tempMarker = ".cmx-tmp-"
	randLen    = 16
	// nameMax is the longest file name that Linux file systems accept (NAME_MAX).
	nameMax = 255
	// hashLen is the number of hex digits of the name's hash kept when a long name is shortened.
	hashLen = 16
)

// WriteFile replaces the file at path with data, atomically and durably, creating missing parent
// folders (mode 0755). A symbolic link at path is replaced, not followed.
//
// If it returns an error before the rename, the target is untouched and the temporary file is
// removed. An error from the final folder fsync means the new file is in place but may not survive
// a power loss. Errors keep their errno: errors.Is(err, syscall.ENOSPC), syscall.EBUSY,
// fs.ErrPermission and the like work on them.
//
// The order, in Prepare and Commit, is what makes the replacement atomic and durable:
//
//  1. Parent folders that are missing are created and fsynced (each new folder and the folder that
//     holds the topmost one), so the path to the file survives a power loss too.
//  2. The temporary file is created in the target's own folder: rename(2) is atomic only within one
//     file system, and the same folder also means the same mount.
//  3. Write the data, then chmod, then fsync. chmod goes before fsync (not after) so that the one
//     fsync makes the mode durable together with the bytes; created with 0600, the file is never
//     readable by others before it has its final mode.
//  4. Close, checking the error: some file systems (NFS) report write errors only there.
//  5. Rename over the target. Readers hold either the old inode or the new one, both complete,
//     which is why a reader never sees a mix. Before this point the target is untouched.
//  6. fsync the folder. The rename is a change to the folder, not to the file: without this a
//     power loss can bring the old name back (or, for a new file, no name at all) although the
//     file's data were synced. Popular libraries skip this step.
//
// On failure in steps 2 to 5 the temporary file is removed; that removal is not synced, since a
// temporary file resurrected by a power loss is cleaned up by RemoveTemps at the next start.
func WriteFile(path string, data []byte, opt Options) error {
	p, err := Prepare(path, data, opt)
	if err != nil {
		return err
	}
	return p.Commit()
}

// step reports the durable step name to opt.Step, when set.
func step(opt Options, name string) {
	if opt.Step != nil {
		opt.Step(name)
	}
}

// writeSyncClose writes data to f, sets its mode, syncs and closes it; f is closed in every case.
func writeSyncClose(f *os.File, data []byte, perm fs.FileMode) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// createTemp creates a new temporary file for target base in dir, mode 0600, and returns it open for
// writing with its path. It names the file itself rather than using os.CreateTemp so that the random
// part has a fixed form that RemoveTemps can recognise exactly.
func createTemp(dir, base string) (*os.File, string, error) {
	prefix := tempPrefix(base)
	var err error
	// 64 random bits collide only by accident with a leftover; a few attempts cover that.
	for range 4 {
		var b [randLen / 2]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error
		name := filepath.Join(dir, prefix+hex.EncodeToString(b[:]))
		var f *os.File
		f, err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			return f, name, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	return nil, "", err
}

// tempPrefix returns the name of base's temporary files without their random part. A name too long
// to take the additions is cut and a hash of the whole name appended, so that two long names with
// the same beginning still get different prefixes.
func tempPrefix(base string) string {
	p := "." + base + tempMarker
	if len(p)+randLen <= nameMax {
		return p
	}
	sum := sha256.Sum256([]byte(base))
	keep := nameMax - randLen - len(tempMarker) - hashLen - len(".") - len("~")
	return "." + base[:keep] + "~" + hex.EncodeToString(sum[:])[:hashLen] + tempMarker
}

// isTemp reports whether name is a temporary file with the given prefix: the prefix followed by
// exactly randLen lower-case hex digits, as createTemp makes them.
func isTemp(name, prefix string) bool {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || len(rest) != randLen {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ensureDir creates dir and its missing parents, mode 0755 whatever the umask, and makes their
// creation durable. Folders that exist already are left as they are.
func ensureDir(dir string) error {
	var missing []string // deepest first
	for p := dir; ; {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return &fs.PathError{Op: "mkdir", Path: p, Err: syscall.ENOTDIR}
			}
			break
		}
		parent := filepath.Dir(p)
		if !errors.Is(err, fs.ErrNotExist) || parent == p {
			return err
		}
		missing = append(missing, p)
		p = parent
	}
	if len(missing) == 0 {
		return nil
	}
	for i := len(missing) - 1; i >= 0; i-- {
		d := missing[i]
		if err := os.Mkdir(d, dirPerm); err != nil {
			// Another process may create the same folder at the same time; its mode is not ours to set.
			if errors.Is(err, fs.ErrExist) {
				if fi, serr := os.Stat(d); serr == nil && fi.IsDir() {
					continue
				}
			}
			return err
		}
		if err := os.Chmod(d, dirPerm); err != nil {
			return err
		}
	}
	// Each new folder's fsync records its inode and its entry for the next one down; the folder
	// that already existed records the entry for the topmost new one.
	for _, d := range missing {
		if err := SyncDir(d); err != nil {
			return err
		}
	}
	return SyncDir(filepath.Dir(missing[len(missing)-1]))
}

// SyncDir fsyncs the folder dir, making the creation, renaming and removal of its entries durable.
//
// A file system that cannot sync folders (fsync returns EINVAL) is taken as having nothing to sync,
// as SQLite does; other errors, EIO above all, are returned.
func SyncDir(dir string) error {
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	cerr := f.Close()
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) && errors.Is(pe.Err, syscall.EINVAL) {
			err = nil
		} else if pe != nil {
			err = &fs.PathError{Op: "fsync folder", Path: dir, Err: pe.Err}
		}
	}
	if err == nil {
		err = cerr
	}
	return err
}

// Remove deletes the file at path and makes the deletion durable by syncing its folder. A missing
// file is not an error, and its folder is still synced, so that calling Remove again after a crash
// completes a deletion that had not been synced yet. Remove does not delete folders.
func Remove(path string) error {
	if err := syscall.Unlink(path); err != nil && !errors.Is(err, syscall.ENOENT) {
		return &fs.PathError{Op: "remove", Path: path, Err: err}
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // no folder, so nothing in it to sync
		}
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// RemoveTemps deletes the temporary files that WriteFile left beside path when it was interrupted
// (by a crash or a power loss) and returns how many it removed. It removes only temporary files of
// this path, never other files of the folder, and returns 0 and no error when the folder does not
// exist. It must not run while a WriteFile for the same path is in progress, whose temporary file it
// would take away.
func RemoveTemps(path string) (removed int, err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("remove temporary files of %s: %w", path, err)
	}
	prefix := tempPrefix(base)
	var errs []error
	for _, e := range entries {
		if !e.Type().IsRegular() || !isTemp(e.Name(), prefix) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		removed++
	}
	if removed > 0 {
		if err := SyncDir(dir); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("remove temporary files of %s: %w", path, errors.Join(errs...))
	}
	return removed, nil
}

// HashFile returns the hex sha256 of the file at path, read in small pieces: the form in which
// the agent records the hash of what it applied. Only a regular file is read (see OpenRegular):
// anything else there is a *NotRegularError, returned at once.
func HashFile(path string) (string, error) {
	f, _, err := OpenRegular(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
