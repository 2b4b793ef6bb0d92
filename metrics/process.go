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
	"syscall"
)

// UserHZ is the unit of the CPU and start times in /proc/<pid>/stat. The kernel reports them in
// USER_HZ, which is 100 on every architecture Linux has (the Prometheus client libraries assume
// the same), whatever the kernel's own tick rate; sysconf(_SC_CLK_TCK) would need cgo.
const UserHZ = 100

// Process writes the process_* families the Prometheus client libraries export, with the same
// names and meanings: start time, CPU time, resident and virtual memory, open and maximum file
// descriptors, read from /proc/self and getrusage(2). A family whose source cannot be read (not
// Linux, /proc not mounted) is left out and named in the error; the others are written.
func Process(w *Writer) error { return writeProcess(w, "/proc", os.Getpid(), rusageCPU) }

// writeProcess reads the files below proc, a folder laid out as /proc, for the process pid, and
// its CPU time from cpu.
//
// The start time comes from the main thread's record, /proc/self/task/<pid>/stat: its start is
// the process's, and emulators that fake /proc/self/stat (qemu-user, which runs the ARM test suites)
// pass it through. Memory comes from /proc/self/statm, which they leave alone too, and CPU time from
// getrusage(2), which counts every thread.
func writeProcess(w *Writer, proc string, pid int, cpu func() (float64, error)) error {
	var errs []error
	self := filepath.Join(proc, "self")
	start, err := readStartTicks(filepath.Join(self, "task", strconv.Itoa(pid), "stat"))
	if err == nil {
		var boot uint64
		if boot, err = readBootTime(filepath.Join(proc, "stat")); err == nil {
			w.Family("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.", "gauge")
			w.Sample("process_start_time_seconds", float64(boot)+float64(start)/UserHZ)
		}
	}
	errs = append(errs, err)
	if secs, err := cpu(); err != nil {
		errs = append(errs, err)
	} else {
		w.Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter")
		w.Sample("process_cpu_seconds_total", secs)
	}
	if virt, res, err := readStatm(filepath.Join(self, "statm")); err != nil {
		errs = append(errs, err)
	} else {
		page := float64(os.Getpagesize())
		w.Family("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge")
		w.Sample("process_resident_memory_bytes", float64(res)*page)
		w.Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge")
		w.Sample("process_virtual_memory_bytes", float64(virt)*page)
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

// rusageCPU is the user and system CPU time of all the process's threads, in seconds.
func rusageCPU() (float64, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("process metrics: getrusage: %w", err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9, nil
}

// readStatm returns the virtual and resident sizes, in pages, from /proc/<pid>/statm.
func readStatm(path string) (virt, res uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("process metrics: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, 0, fmt.Errorf("process metrics: %s: %d fields, want at least 2", path, len(f))
	}
	if virt, err = strconv.ParseUint(f[0], 10, 64); err == nil {
		res, err = strconv.ParseUint(f[1], 10, 64)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("process metrics: %s: %w", path, err)
	}
	return virt, res, nil
}

// readStartTicks returns the start time (field 22, in USER_HZ ticks after boot) of a
// /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file.
func readStartTicks(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("process metrics: %w", err)
	}
	n, err := StatField(b, 22)
	if err != nil {
		return 0, fmt.Errorf("process metrics: %s: %w", path, err)
	}
	return n, nil
}

// StatField reads numeric field n (numbered as in proc_pid_stat(5), n ≥ 3) of a /proc/<pid>/stat
// line. The command name (field 2) is in parentheses and may itself hold spaces and parentheses,
// so the fields are counted from the last ')'.
func StatField(b []byte, n int) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no command name in parentheses")
	}
	// fields[0] is field 3 (state).
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) <= n-3 {
		return 0, fmt.Errorf("%d fields after the command name, want at least %d", len(fields), n-2)
	}
	v, err := strconv.ParseUint(fields[n-3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("field %d: %w", n, err)
	}
	return v, nil
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
