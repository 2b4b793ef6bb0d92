package store

import (
	"bytes"
	"os"
	"testing"

	"github.com/cmx-agent/cmx-agent/internal/procio"
)

// procWriteBytes is this process's write_bytes (procio.WriteBytes); the test is skipped where
// the kernel does not account it.
func procWriteBytes(t testing.TB) int64 {
	t.Helper()
	n, ok := procio.WriteBytes()
	if !ok {
		t.Skip("no write_bytes in /proc/self/io")
	}
	return n
}

// The disk pays for the pages a commit writes, not for the folios around them: without dropCache,
// bbolt's first write of a new file (16 KiB) leaves a folio that every meta page write dirties whole.
func TestOpenStore_CommitsAreAccountedByThePage(t *testing.T) {
	if os.Getenv("CMX_TEST_UNDER_QEMU") != "" {
		// The accounting is the host kernel's page cache seen through qemu-user's emulation of
		// posix_fadvise: there 64 commits of 194 pages were accounted 1,556,480 bytes, as if the
		// cache had not been dropped. What is measured is the kernel's, not the CPU's.
		t.Skip("page-cache accounting under qemu-user is not the target's")
	}
	st := mustOpen(t, 0)
	body := bytes.Repeat([]byte("x"), 256)
	for i := range 40 {
		if err := st.Update(func(tx *Tx) error { return pushCommit(tx, i+1, body) }); err != nil {
			t.Fatal(err)
		}
	}
	const n = 64
	s0 := st.db.Stats()
	w0 := procWriteBytes(t)
	for i := range n {
		if err := st.Update(func(tx *Tx) error { return pushCommit(tx, i+100, body) }); err != nil {
			t.Fatal(err)
		}
	}
	w := procWriteBytes(t) - w0
	s1 := st.db.Stats()
	pages := s1.TxStats.GetWrite() - s0.TxStats.GetWrite()
	t.Logf("%d commits: %d pages written, %d bytes accounted", n, pages, w)
	if limit := pages * int64(os.Getpagesize()); w > limit+limit/4 {
		t.Errorf("%d commits wrote %d pages and were accounted %d bytes, want about %d", n, pages, w, limit)
	}
}
