//go:build linux

package store

import (
	"os"

	"golang.org/x/sys/unix"
)

// dropCache drops the file's pages from the page cache (after flushing any that are dirty). It
// changes nothing on disk and nothing that is durable; it changes how much a commit writes.
//
// The kernel keeps a file's cache in folios, which can be larger than a page: bbolt creates a new
// database with one 16 KiB write (both meta pages, the free list and the root), and a file read or
// written in large pieces gets large folios. A folio is dirtied, accounted and written back as a
// whole, so every commit's 4 KiB meta page then costs 16 KiB. Read back after the drop through
// bbolt's mmap (MADV_RANDOM) and written by bbolt one page at a time, the cache holds single pages.
func dropCache(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	fd := int(f.Fd())
	if unix.Fdatasync(fd) == nil {
		_ = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
	}
}
