package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// userHZ is the unit of the CPU and start times in /proc/<pid>/stat. The kernel reports them in
// USER_HZ, which is 100 on every architecture Linux has (the Prometheus client libraries assume
// the same), whatever the kernel's own tick rate.
const userHZ = 100

// Process writes the process_* families the Prometheus client libraries export, with the same
// names and meanings, read from /proc/self: start time, CPU time, resident and virtual memory, open
// and maximum file descriptors. A family whose source cannot be read (not Linux, /proc not
// mounted) is left out and named in the error; the others are written.
func Process(w *Writer) error { return writeProcess(w, "/proc") }

// writeProcess reads the files below proc, a folder laid out as /proc.
func writeProcess(w *Writer, proc string) error {
	var errs []error
	self := filepath.Join(proc, "self")
	st, err := readStat(filepath.Join(self, "stat"))
	if err != nil {
		errs = append(errs, err)
	} else {
		if boot, err := readBootTime(filepath.Join(proc, "stat")); err != nil {
			errs = append(errs, err)
		} else {
			w.Family("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.", "gauge")
			w.Sample("process_start_time_seconds", float64(boot)+float64(st.startTicks)/userHZ)
		}
		w.Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter")
		w.Sample("process_cpu_seconds_total", float64(st.utime+st.stime)/userHZ)
		w.Family("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge")
		w.Sample("process_resident_memory_bytes", float64(st.rssPages)*float64(os.Getpagesize()))
		w.Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge")
		w.Sample("process_virtual_memory_bytes", float64(st.vsize))
	}
	if n, err := countEntries(filepath.Join(self, "fd")); err != nil {
		errs = append(errs, err)
	} else {
		w.Family("process_open_fds", "Number of open file descriptors.", "gauge")
		w.Sample("process_open_fds", float64(n))
	}
	if n, err := readMaxFiles(filepath.Join(self, "limits")); err != nil {
		errs = append(errs, err)
	} else {
		w.Family("process_max_fds", "Maximum number of open file descriptors.", "gauge")
		w.Sample("process_max_fds", n)
	}
	return errors.Join(errs...)
}

// procStat holds the fields of /proc/<pid>/stat the families need.
type procStat struct {
	utime, stime, startTicks, vsize, rssPages uint64
}

func readStat(path string) (procStat, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procStat{}, fmt.Errorf("process metrics: %w", err)
	}
	st, err := parseStat(b)
	if err != nil {
		return procStat{}, fmt.Errorf("process metrics: %s: %w", path, err)
	}
	return st, nil
}

// parseStat reads a /proc/<pid>/stat line. The command name (field 2) is in parentheses and may
// itself hold spaces and parentheses, so the fields are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("no command name in parentheses")
	}
	// fields[0] is field 3 (state) of proc_pid_stat(5).
	fields := strings.Fields(string(b[i+1:]))
	const rss = 24 - 3
	if len(fields) <= rss {
		return procStat{}, fmt.Errorf("%d fields after the command name, want at least %d", len(fields), rss+1)
	}
	var st procStat
	for _, f := range []struct {
		field int
		dst   *uint64
	}{{14, &st.utime}, {15, &st.stime}, {22, &st.startTicks}, {23, &st.vsize}, {24, &st.rssPages}} {
		v, err := strconv.ParseUint(fields[f.field-3], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("field %d: %w", f.field, err)
		}
		*f.dst = v
	}
	return st, nil
}

// readBootTime returns the boot time (Unix seconds) from /proc/stat's btime line.
func readBootTime(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("process metrics: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("process metrics: %s: btime: %w", path, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("process metrics: %s: no btime line", path)
}

// readMaxFiles returns the soft limit of open files from /proc/<pid>/limits (+Inf when unlimited).
func readMaxFiles(path string) (float64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("process metrics: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		v, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		switch {
		case len(f) == 0:
		case f[0] == "unlimited":
			return math.Inf(1), nil
		default:
			n, err := strconv.ParseUint(f[0], 10, 64)
			if err == nil {
				return float64(n), nil
			}
		}
		return 0, fmt.Errorf("process metrics: %s: cannot read %q", path, strings.TrimSpace(line))
	}
	return 0, fmt.Errorf("process metrics: %s: no \"Max open files\" line", path)
}

// countEntries counts the names in a folder, without sorting or stat-ing them.
func countEntries(dir string) (int, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, fmt.Errorf("process metrics: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return 0, fmt.Errorf("process metrics: %s: %w", dir, err)
	}
	return len(names), nil
}
