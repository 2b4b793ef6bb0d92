package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cmx-agent/cmx-agent/metrics"
)

// What a process costs the disk and the CPU, read from /proc and counted with strace.

// syncCalls are the system calls that make written data durable.
var syncCalls = []string{"fsync", "fdatasync", "sync_file_range", "msync"}

// procIO reads write_bytes and cancelled_write_bytes of /proc/<pid>/io: bytes the process caused to
// be sent to storage (counted when it dirties a page cache page, so in pages of 4 KiB), and those of
// them that never were (the page was truncated or deleted before writeback).
func procIO(pid int) (write, cancelled int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseProcIO(data)
}

func parseProcIO(data []byte) (write, cancelled int64, err error) {
	found := 0
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch strings.TrimSpace(k) {
		case "write_bytes":
			dst = &write
		case "cancelled_write_bytes":
			dst = &cancelled
		default:
			continue
		}
		n, perr := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if perr != nil {
			return 0, 0, fmt.Errorf("/proc/PID/io: %s: %w", k, perr)
		}
		*dst = n
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("/proc/PID/io: no write_bytes and cancelled_write_bytes")
	}
	return write, cancelled, nil
}

// procCPU returns the CPU time (user + system, all threads) the process has used so far.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStat(data)
}

// parseProcStat returns utime + stime (fields 14 and 15) of a stat line.
func parseProcStat(data []byte) (time.Duration, error) {
	var ticks uint64
	for _, n := range []int{14, 15} {
		v, err := metrics.StatField(data, n)
		if err != nil {
			return 0, fmt.Errorf("/proc/PID/stat: %w", err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / metrics.UserHZ, nil
}

// syncTrace is strace attached to a running process (all its threads, and children it starts),
// counting the sync calls: `strace -f -c -e trace=fsync,fdatasync,sync_file_range,msync -p PID`.
type syncTrace struct {
	cmd  *exec.Cmd
	out  string
	done chan struct{}
}

func startSyncTrace(pid int, dir string) (*syncTrace, error) {
	bin, err := exec.LookPath("strace")
	if err != nil {
		return nil, errors.New("strace not found: apt-get install -y strace")
	}
	t := &syncTrace{out: filepath.Join(dir, fmt.Sprintf("strace-%d-%d.txt", pid, time.Now().UnixNano())), done: make(chan struct{})}
	t.cmd = exec.Command(bin, "-f", "-c", "-e", "trace="+strings.Join(syncCalls, ","), "-o", t.out, "-p", strconv.Itoa(pid))
	var stderr bytes.Buffer
	t.cmd.Stderr = &stderr
	t.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := t.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start strace: %w", err)
	}
	go func() { _ = t.cmd.Wait(); close(t.done) }()
	// Counting starts only once every thread is traced; threads started later are followed (-f).
	deadline := time.Now().Add(10 * time.Second)
	for !allTraced(pid) {
		select {
		case <-t.done:
			return nil, fmt.Errorf("strace exited: %s", strings.TrimSpace(stderr.String()))
		default:
		}
		if time.Now().After(deadline) {
			t.stop()
			return nil, fmt.Errorf("strace did not attach to every thread of %d within 10s", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return t, nil
}

// allTraced reports whether every thread of pid has a tracer.
func allTraced(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue // the thread exited
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "TracerPid:"); ok && strings.TrimSpace(v) == "0" {
				return false
			}
		}
	}
	return true
}

// stop detaches strace (SIGINT) and returns the calls it counted, by name.
func (t *syncTrace) stop() (map[string]int, error) {
	if !signalWait(t.cmd.Process, syscall.SIGINT, t.done, 10*time.Second) {
		return nil, errors.New("strace did not exit within 10s of SIGINT")
	}
	data, err := os.ReadFile(t.out)
	if err != nil {
		return nil, err
	}
	return parseStraceSummary(data)
}

// parseStraceSummary reads the table of `strace -c`: per system call its number of calls (the
// fourth column; the errors column may be empty). The total line is left out. strace writes
// nothing at all when none of the traced calls was made.
func parseStraceSummary(data []byte) (map[string]int, error) {
	calls := map[string]int{}
	if len(bytes.TrimSpace(data)) == 0 {
		return calls, nil
	}
	header := false
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "---") {
			continue
		}
		if f[0] == "%" {
			header = true
			continue
		}
		if !header || len(f) < 5 {
			continue
		}
		name := f[len(f)-1]
		if name == "total" {
			continue
		}
		n, err := strconv.Atoi(f[3])
		if err != nil {
			return nil, fmt.Errorf("strace -c: %q: calls: %w", line, err)
		}
		calls[name] += n
	}
	if !header {
		return nil, errors.New("strace -c: no summary table")
	}
	return calls, nil
}
