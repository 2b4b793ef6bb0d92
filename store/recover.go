package store

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// errUnreadable marks a database file that exists but cannot be used as one.
var errUnreadable = errors.New("state database unreadable")

// Recovery describes a damaged database that OpenStore moved aside.
type Recovery struct {
	MovedTo string // where the damaged file now is
	Cause   string // what was wrong with it
}

// openChecked opens path and proves the whole file readable before the agent relies on it: the
// size its meta page claims is there, and every bucket and key can be walked. bbolt trusts the file
// it maps; a truncated or overwritten page would otherwise fault or panic later, in the middle of
// handling a push, and again after every restart.
func openChecked(path string, lockTimeout time.Duration) (*bolt.DB, error) {
	return openFile(path, lockTimeout, true)
}

// openFile opens path with the store's options; check walks it as openChecked says. Without check
// it is for a file this process has just checked and closed.
func openFile(path string, lockTimeout time.Duration, check bool) (db *bolt.DB, err error) {
	// A page past a truncated end faults as soon as bbolt touches it, Open included (it reads the
	// free list): with this the fault is a panic, recovered below, instead of a fatal signal.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if db != nil {
				func() {
					defer func() { _ = recover() }()
					db.Close()
				}()
				db = nil
			}
			err = fmt.Errorf("%w: %v", errUnreadable, r)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout: lockTimeout,
		// The free list is written with every commit (one page more) rather than rebuilt from
		// the pages at open (NoFreelistSync): bbolt rebuilds it in a goroutine of its own, where
		// a damaged page panics beyond any recover, and a damaged database must be moved aside,
		// never become a crash loop (seen in the soak's "corrupt agent.db" fault).
		FreelistType: bolt.FreelistMapType,
	})
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, err
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum),
		errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrInvalidMapping):
		return nil, fmt.Errorf("%w: %v", errUnreadable, err)
	case err != nil:
		if fi, serr := os.Stat(path); serr == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
			// bbolt reports a file too small for its own header as a plain error.
			return nil, fmt.Errorf("%w: %v", errUnreadable, err)
		}
		return nil, err
	}
	if !check {
		return db, nil
	}
	if werr := walk(db, path); werr != nil {
		db.Close()
		return nil, fmt.Errorf("%w: %v", errUnreadable, werr)
	}
	return db, nil
}

// walk reads every page the database references. It runs under openFile's fault and panic
// handling.
func walk(db *bolt.DB, path string) error {
	return db.View(func(tx *bolt.Tx) error {
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if fi.Size() < tx.Size() {
			return fmt.Errorf("file is %d bytes, its header says %d: truncated", fi.Size(), tx.Size())
		}
		var visit func(b *bolt.Bucket) error
		visit = func(b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				if v == nil {
					if sub := b.Bucket(k); sub != nil {
						return visit(sub)
					}
				}
				return nil
			})
		}
		if err := tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return visit(b) }); err != nil {
			return err
		}
		// Free list and page accounting; the channel is drained so that the checking goroutine
		// finishes before the transaction closes.
		var first error
		for err := range tx.Check() {
			if first == nil {
				first = err
			}
		}
		return first
	})
}

// moveAside renames the damaged database out of the way. The time in the name is only to keep
// several apart for a person to look at.
func moveAside(path string, cause error) (*Recovery, error) {
	aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.Rename(path, aside); err != nil {
		return nil, fmt.Errorf("move unreadable state database aside: %w (it was unreadable: %v)", err, cause)
	}
	return &Recovery{MovedTo: aside, Cause: cause.Error()}, nil
}

// seedCounter starts the message id counter of a fresh database after a recovery far above the ids
// the lost database may have handed out, so that ids still do not repeat: the current time in
// microseconds, which only needs to exceed the number of requests made before.
func seedCounter(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		seed := time.Now().UnixMicro()
		if seed <= 0 {
			return nil // a clock before 1970 gives no floor; the counter starts at 1
		}
		return tx.Bucket(bucketHot).Put(keyCounter, u64(uint64(seed)))
	})
}
