// Package procio reads this process's I/O accounting (/proc/self/io), for the tests and benchmarks
// that measure what reaches the disk.
package procio

import (
	"os"
	"strconv"
	"strings"
)

// WriteBytes is this process's write_bytes: what the kernel accounts as sent to the disk, a whole
// folio for every one dirtied. ok is false where /proc/self/io does not say (not Linux, or a kernel
// without task I/O accounting).
func WriteBytes() (n int64, ok bool) {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, found := strings.CutPrefix(line, "write_bytes: "); found {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}
