package apply

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strconv"
)

// Owner is a resolved owner and group for an output; -1 leaves that part as it is.
type Owner struct {
	UID, GID int
}

// NoOwner leaves owner and group as the agent created them.
var NoOwner = Owner{UID: -1, GID: -1}

// LookupOwner resolves a user and a group given by name or number; "" leaves that part unchanged.
// It is done before anything is written, so an unknown name fails the apply with nothing changed.
func LookupOwner(owner, group string) (Owner, error) {
	o := NoOwner
	if owner != "" {
		if n, err := strconv.Atoi(owner); err == nil && n >= 0 {
			o.UID = n
		} else {
			u, err := user.Lookup(owner)
			if err != nil {
				return o, fmt.Errorf("owner %q: %w", owner, err)
			}
			o.UID, _ = strconv.Atoi(u.Uid)
		}
	}
	if group != "" {
		if n, err := strconv.Atoi(group); err == nil && n >= 0 {
			o.GID = n
		} else {
			g, err := user.LookupGroup(group)
			if err != nil {
				return o, fmt.Errorf("group %q: %w", group, err)
			}
			o.GID, _ = strconv.Atoi(g.Gid)
		}
	}
	return o, nil
}

// IsSet reports whether o changes anything.
func (o Owner) IsSet() bool { return o.UID >= 0 || o.GID >= 0 }

// Chown sets o on the file at path, by path and after the rename: some file systems drop ownership
// set on a temporary file when it is renamed. Lchown, so that a link put at path cannot redirect it.
func (o Owner) Chown(path string) error {
	if !o.IsSet() {
		return nil
	}
	if err := os.Lchown(path, o.UID, o.GID); err != nil {
		return fmt.Errorf("set owner: %w", err)
	}
	return nil
}

// ChownKeepingMode is Chown for a file that WriteFile gave the mode perm. chown(2) clears setuid and
// setgid, for root too, so when perm has them they are set again after it, through a descriptor
// from OpenRegular: a link put at path in between cannot redirect the chmod elsewhere.
func (o Owner) ChownKeepingMode(path string, perm fs.FileMode) error {
	if err := o.Chown(path); err != nil || !o.IsSet() || perm&(fs.ModeSetuid|fs.ModeSetgid) == 0 {
		return err
	}
	f, _, err := OpenRegular(path)
	if err != nil {
		return fmt.Errorf("set mode again after the owner: %w", err)
	}
	err = f.Chmod(perm)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("set mode again after the owner: %w", err)
	}
	return nil
}
