package store

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// damagedStore makes a store with some state and an id counter past 10, closes it, and damages the
// file with damage.
func damagedStore(t *testing.T, damage func(t *testing.T, path string)) (dir string, before []byte) {
	t.Helper()
	dir = t.TempDir()
	st := mustOpenIn(t, dir, 0)
	err := st.Update(func(tx *Tx) error {
		if _, err := tx.NextIDs(10); err != nil {
			return err
		}
		for i := range 200 {
			if err := tx.SetHandled("gw-001", strings.Repeat("x", i+1), Handled{Status: "ok", Code: CodeOK}); err != nil {
				return err
			}
		}
		return tx.SetState("gw-001", EndpointState{AppliedID: "1", AppliedHash: "abc"})
	})
	if err != nil {
		t.Fatal(err)
	}
	st.mustClose()
	path := filepath.Join(dir, DBName)
	damage(t, path)
	before, err = os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return dir, before
}

func TestOpenStore_UnreadableDatabaseIsMovedAsideAndReplaced(t *testing.T) {
	truncate := func(size func(int64) int64) func(*testing.T, string) {
		return func(t *testing.T, path string) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, size(fi.Size())); err != nil {
				t.Fatal(err)
			}
		}
	}
	overwrite := func(off int64, data []byte) func(*testing.T, string) {
		return func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(data, off); err != nil {
				t.Fatal(err)
			}
		}
	}
	page := int64(os.Getpagesize())
	cases := []struct {
		name   string
		damage func(*testing.T, string)
	}{
		{"truncated to 100 bytes", truncate(func(int64) int64 { return 100 })},
		{"truncated to half", truncate(func(n int64) int64 { return n / 2 })},
		{"truncated after the meta pages", truncate(func(int64) int64 { return 2*page + 1 })},
		{"both meta pages zeroed", overwrite(0, make([]byte, 2*page))},
		{"not a database", func(t *testing.T, path string) {
			if err := os.WriteFile(path, bytes.Repeat([]byte("garbage\n"), 3000), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"data pages overwritten", func(t *testing.T, path string) {
			fi, _ := os.Stat(path)
			overwrite(2*page, bytes.Repeat([]byte{0xff}, int(fi.Size()-2*page)))(t, path)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, damaged := damagedStore(t, tc.damage)
			st, err := OpenStore(dir, time.Second, 0)
			if err != nil {
				t.Fatalf("OpenStore on a damaged file: %v (it must recover, never fail or crash)", err)
			}
			defer st.Close()
			r := st.Recovered()
			if r == nil {
				t.Fatal("Recovered() = nil, want the damaged file moved aside")
			}
			if r.Cause == "" || !strings.HasPrefix(filepath.Base(r.MovedTo), DBName+".corrupt-") {
				t.Errorf("Recovery = %+v", r)
			}
			if got, err := os.ReadFile(r.MovedTo); err != nil || !bytes.Equal(got, damaged) {
				t.Errorf("moved-aside file differs from the damaged one (%v)", err)
			}
			if fi, err := os.Stat(filepath.Join(dir, DBName)); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("fresh database: %v, %v", fi, err)
			}
			var id uint64
			var state EndpointState
			err = st.Update(func(tx *Tx) error {
				var err error
				if id, err = tx.NextIDs(1); err != nil {
					return err
				}
				state, err = tx.State("gw-001")
				return err
			})
			if err != nil {
				t.Fatalf("fresh store: %v", err)
			}
			if id <= 10 {
				t.Errorf("first message id after recovery = %d, want above the 10 the lost database handed out", id)
			}
			if state != (EndpointState{}) {
				t.Errorf("fresh state = %+v, want empty", state)
			}
		})
	}
}

func TestOpenStore_HealthyDatabaseIsKept(t *testing.T) {
	dir, _ := damagedStore(t, func(*testing.T, string) {})
	st, err := OpenStore(dir, time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if r := st.Recovered(); r != nil {
		t.Fatalf("Recovered() = %+v on a healthy file", r)
	}
	var state EndpointState
	st.View(func(tx *Tx) error { state, err = tx.State("gw-001"); return err })
	if state.AppliedHash != "abc" {
		t.Errorf("state = %+v, want the stored one", state)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state folder holds %d files, want only %s", len(entries), DBName)
	}
}
