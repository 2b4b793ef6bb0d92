package apply

import (
	"errors"
	"io/fs"
	"syscall"
)

// Cause names, in plain words, why a file operation failed, for a status that an operator reads on
// the cloud side. It returns "" for errors it has no better words for than the error itself.
func Cause(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, syscall.ENOSPC):
		return "disk full"
	case errors.Is(err, syscall.EDQUOT):
		return "disk quota exceeded"
	case errors.Is(err, syscall.EROFS):
		return "read-only file system"
	case errors.Is(err, syscall.EBUSY):
		return "output is busy or a mount point (a bind-mounted single file cannot be replaced; mount its folder instead)"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	case errors.Is(err, syscall.ENOTDIR):
		return "a path component is not a folder"
	case errors.Is(err, syscall.EISDIR):
		return "output is a folder"
	case errors.Is(err, syscall.EIO):
		return "I/O error"
	}
	return ""
}

// Describe is err prefixed with its Cause when there is one: "disk full: replace /x: write ...".
func Describe(err error) string {
	if c := Cause(err); c != "" {
		return c + ": " + err.Error()
	}
	return err.Error()
}
