package apply

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// NotRegularError is what sits at a path the agent reads when it is not a regular file. What sits
// at an output is not trusted: anyone who may write the output's folder can put a link there (to a
// file only root may read) or a FIFO (whose open waits for a writer forever), so every read of an
// output refuses them rather than follow or wait.
type NotRegularError struct {
	Path string
	// Kind names what is there: "symbolic link", "FIFO", "socket", "device", "directory" or
	// "special file".
	Kind string
}

func (e *NotRegularError) Error() string {
	return fmt.Sprintf("%s is a %s, not a regular file", e.Path, e.Kind)
}

// TooLargeError is ReadRegular's error for a file of more bytes than its limit.
type TooLargeError struct {
	Path  string
	Limit int64
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s holds more than %d bytes", e.Path, e.Limit)
}

func kindOf(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	case m.IsDir():
		return "directory"
	}
	return "special file"
}

// LstatRegular looks at path without following a link or opening anything: it returns the
// FileInfo of a regular file, a *NotRegularError for anything else, and Lstat's error (matching
// fs.ErrNotExist for a missing file) when there is nothing to look at.
func LstatRegular(path string) (fs.FileInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &NotRegularError{Path: path, Kind: kindOf(fi.Mode())}
	}
	return fi, nil
}

// OpenRegular opens the regular file at path for reading, never following a symbolic link there and
// never waiting on what is there, and returns it with its FileInfo from fstat. Anything else at
// path is a *NotRegularError; a missing file is an error that matches fs.ErrNotExist.
func OpenRegular(path string) (*os.File, fs.FileInfo, error) {
	// Looked at first, so that nothing but a regular file is opened at all: opening a device can
	// act on it (a serial line's modem control, a tape's rewind) even when nothing is read.
	if _, err := LstatRegular(path); err != nil {
		return nil, nil, err
	}
	// The name may be given to something else between the Lstat and the open: O_NOFOLLOW refuses a
	// link then, O_NONBLOCK keeps the open of a FIFO from waiting for a writer, and the fstat below
	// checks what was really opened. O_NONBLOCK changes nothing for reads of a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, nil, &NotRegularError{Path: path, Kind: "symbolic link"}
		}
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, &NotRegularError{Path: path, Kind: kindOf(fi.Mode())}
	}
	return f, fi, nil
}

// ReadRegular reads the regular file at path, as OpenRegular opens it, and returns its bytes and
// FileInfo. A file of more than limit bytes is a *TooLargeError, found before reading when it can
// be, so that what sits at a path cannot make the agent hold more memory than its limits allow.
func ReadRegular(path string, limit int64) ([]byte, fs.FileInfo, error) {
	f, fi, err := OpenRegular(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	if fi.Size() > limit {
		return nil, nil, &TooLargeError{Path: path, Limit: limit}
	}
	// The file may grow after the fstat: read one byte more than allowed to see it.
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, nil, &TooLargeError{Path: path, Limit: limit}
	}
	return b, fi, nil
}

// AttrOf returns the mode (permission bits with setuid, setgid and sticky) and the owner of the
// file fi describes, as WriteFile and Owner.Chown set them: what a file put back gets again.
func AttrOf(fi fs.FileInfo) (fs.FileMode, Owner) {
	own := NoOwner
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		own = Owner{UID: int(st.Uid), GID: int(st.Gid)}
	}
	return fi.Mode() & validPerm, own
}
