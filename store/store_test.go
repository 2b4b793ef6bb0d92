package store

import (
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// testStore is a store in a test's own folder, in the spirit of bbolt's internal/btesting: opened
// in t.TempDir(), checked and closed when the test ends, and opened again on the same file as the
// agent does after a restart.
type testStore struct {
	*Store
	t          testing.TB
	dir        string
	handledMax int
}

// mustOpen opens a new store in a folder of its own; handledMax as OpenStore takes it.
func mustOpen(t testing.TB, handledMax int) *testStore {
	t.Helper()
	return mustOpenIn(t, t.TempDir(), handledMax)
}

// mustOpenIn opens the store in dir, which may hold a database already.
func mustOpenIn(t testing.TB, dir string, handledMax int) *testStore {
	t.Helper()
	s := &testStore{t: t, dir: dir, handledMax: handledMax}
	s.mustReopen()
	t.Cleanup(s.cleanup)
	return s
}

// mustClose closes the store; its file stays.
func (s *testStore) mustClose() {
	s.t.Helper()
	if s.Store == nil {
		return
	}
	if err := s.Store.Close(); err != nil {
		s.t.Fatalf("close: %v", err)
	}
	s.Store = nil
}

// mustReopen opens the store's file again after mustClose.
func (s *testStore) mustReopen() {
	s.t.Helper()
	if s.Store != nil {
		s.t.Fatal("mustReopen on an open store: mustClose it first")
	}
	st, err := OpenStore(s.dir, time.Second, s.handledMax)
	if err != nil {
		s.t.Fatalf("open the store in %s: %v", s.dir, err)
	}
	s.Store = st
}

// cleanup checks the file's page accounting, as bbolt's own tests do after each, and closes it.
func (s *testStore) cleanup() {
	if s.Store == nil {
		return
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		var first error
		for err := range tx.Check() { // drained, so that the checker ends before the transaction
			if first == nil {
				first = err
			}
		}
		return first
	})
	if err != nil {
		s.t.Errorf("the database is inconsistent at the end of the test: %v", err)
	}
	s.mustClose()
}
