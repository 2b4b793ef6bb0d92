package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// parse writes with write and parses the output with the Prometheus project's own parser.
func parse(t *testing.T, write func(w *Writer) error) (map[string]*dto.MetricFamily, error) {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	werr := write(w)
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		t.Fatalf("does not parse: %v\n%s", err, buf.String())
	}
	return fams, werr
}

// single returns the value of a family's only sample.
func single(t *testing.T, fams map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok || len(f.GetMetric()) != 1 {
		t.Fatalf("family %s: %v, want one sample", name, f)
	}
	m := f.GetMetric()[0]
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("family %s is neither counter nor gauge", name)
	return 0
}

// fakeProc lays out a /proc with the given files (paths relative to it) and an fd folder of n
// entries.
func fakeProc(t *testing.T, files map[string]string, fds int) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if fds >= 0 {
		fd := filepath.Join(dir, "self", "fd")
		if err := os.MkdirAll(fd, 0o755); err != nil {
			t.Fatal(err)
		}
		for i := range fds {
			if err := os.WriteFile(filepath.Join(fd, fmt.Sprint(i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// A stat line whose command name holds spaces and parentheses, started 12345 ticks after boot.
const statLine = "17189 (a ) (b) R 17185 17185 9553 0 -1 4194304 98 0 0 0 250 50 0 0 20 0 7 0 12345 3133440 413 18446744073709551615 0\n"

const limits = `Limit                     Soft Limit           Hard Limit           Units     
Max processes             96367                96367                processes 
Max open files            1024                 524288               files     
`

// fakePID is the process the fake /proc folders describe.
const fakePID = 17189

// threeSeconds is a CPU clock that has counted 3 s.
func threeSeconds() (float64, error) { return 3, nil }

func TestProcess_ReadsEveryFamilyFromProc(t *testing.T) {
	proc := fakeProc(t, map[string]string{
		"stat":                 "cpu  1 2 3\nbtime 1796623486\nprocesses 9\n",
		"self/task/17189/stat": statLine,
		"self/statm":           "765 413 100 10 0 200 0\n",
		"self/limits":          limits,
	}, 5)
	fams, err := parse(t, func(w *Writer) error { return writeProcess(w, proc, fakePID, threeSeconds) })
	if err != nil {
		t.Fatalf("error %v reading a complete /proc", err)
	}
	page := float64(os.Getpagesize())
	for _, c := range []struct {
		name string
		want float64
	}{
		{"process_start_time_seconds", 1796623486 + 123.45},
		{"process_cpu_seconds_total", 3},
		{"process_resident_memory_bytes", 413 * page},
		{"process_virtual_memory_bytes", 765 * page},
		{"process_open_fds", 5},
		{"process_max_fds", 1024},
	} {
		if got := single(t, fams, c.name); math.Abs(got-c.want) > 1e-6 {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	if typ := fams["process_cpu_seconds_total"].GetType(); typ != dto.MetricType_COUNTER {
		t.Errorf("process_cpu_seconds_total is a %v, want a counter", typ)
	}
}

func TestProcess_LeavesOutWhatItCannotReadAndSaysWhat(t *testing.T) {
	complete := map[string]string{"stat": "btime 1\n", "self/task/17189/stat": statLine, "self/statm": "2 1\n", "self/limits": limits}
	with := func(name, body string) map[string]string {
		m := maps.Clone(complete)
		if body == "" {
			delete(m, name)
		} else {
			m[name] = body
		}
		return m
	}
	noCPU := func() (float64, error) { return 0, errors.New("process metrics: getrusage: not here") }
	cases := []struct {
		name    string
		files   map[string]string
		fds     int
		cpu     func() (float64, error)
		missing []string // families left out
		errHas  string
	}{
		{"no /proc at all", nil, -1, threeSeconds, []string{"process_start_time_seconds", "process_resident_memory_bytes",
			"process_virtual_memory_bytes", "process_open_fds", "process_max_fds"}, "task/17189/stat"},
		{"stat cut short", with("self/task/17189/stat", "1 (x) R 1 2 3\n"), 1, threeSeconds,
			[]string{"process_start_time_seconds"}, "fields after the command name"},
		{"stat without a command name", with("self/task/17189/stat", "garbage"), 1, threeSeconds,
			[]string{"process_start_time_seconds"}, "no command name"},
		{"start time not a number", with("self/task/17189/stat", strings.Replace(statLine, " 12345 ", " x ", 1)), 1, threeSeconds,
			[]string{"process_start_time_seconds"}, "field 22"},
		{"no btime", with("stat", "cpu 1\n"), 1, threeSeconds, []string{"process_start_time_seconds"}, "no btime line"},
		{"no statm", with("self/statm", ""), 1, threeSeconds,
			[]string{"process_resident_memory_bytes", "process_virtual_memory_bytes"}, "statm"},
		{"statm cut short", with("self/statm", "12\n"), 1, threeSeconds,
			[]string{"process_resident_memory_bytes", "process_virtual_memory_bytes"}, "1 fields, want at least 2"},
		{"statm not numbers", with("self/statm", "a b\n"), 1, threeSeconds,
			[]string{"process_resident_memory_bytes"}, "invalid syntax"},
		{"no open files limit", with("self/limits", "Limit\n"), 1, threeSeconds, []string{"process_max_fds"}, `no "Max open files" line`},
		{"limit not a number", with("self/limits", "Max open files  many  many  files\n"), 1, threeSeconds,
			[]string{"process_max_fds"}, "cannot read"},
		{"no CPU clock", complete, 1, noCPU, []string{"process_cpu_seconds_total"}, "getrusage"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			proc := fakeProc(t, c.files, c.fds)
			fams, err := parse(t, func(w *Writer) error { return writeProcess(w, proc, fakePID, c.cpu) })
			if err == nil || !strings.Contains(err.Error(), c.errHas) {
				t.Errorf("error %v, want one saying %q", err, c.errHas)
			}
			for _, name := range c.missing {
				if _, ok := fams[name]; ok {
					t.Errorf("family %s written from what could not be read", name)
				}
			}
			if c.fds >= 0 && single(t, fams, "process_open_fds") != float64(c.fds) {
				t.Errorf("process_open_fds not written though the fd folder was readable")
			}
		})
	}
}

func TestProcess_UnlimitedOpenFilesIsInfinite(t *testing.T) {
	proc := fakeProc(t, map[string]string{"self/limits": "Max open files            unlimited            unlimited            files\n"}, 0)
	fams, _ := parse(t, func(w *Writer) error { return writeProcess(w, proc, fakePID, threeSeconds) })
	if v := single(t, fams, "process_max_fds"); !math.IsInf(v, 1) {
		t.Errorf("process_max_fds = %v, want +Inf", v)
	}
}

// The real /proc/self of this test: the figures follow what the process does, and agree with the
// kernel's other ways of telling them.
func TestProcess_FollowsThisProcess(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	before, err := parse(t, Process)
	if err != nil {
		t.Fatal(err)
	}
	const opened = 3
	for range opened {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	var ru0, ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	cpu := func(r syscall.Rusage) time.Duration {
		return time.Duration(r.Utime.Nano() + r.Stime.Nano())
	}
	for x := 1.0; ; x = math.Sqrt(x + 2) {
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		if cpu(ru)-cpu(ru0) > 300*time.Millisecond {
			break
		}
	}
	after, err := parse(t, Process)
	if err != nil {
		t.Fatal(err)
	}

	if d := single(t, after, "process_open_fds") - single(t, before, "process_open_fds"); d != opened {
		t.Errorf("process_open_fds grew by %v after opening %d files", d, opened)
	}
	if d := single(t, after, "process_cpu_seconds_total") - single(t, before, "process_cpu_seconds_total"); d < 0.2 {
		t.Errorf("process_cpu_seconds_total grew by %v after 0.3 s of CPU", d)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if got := single(t, after, "process_max_fds"); got != float64(lim.Cur) {
		t.Errorf("process_max_fds = %v, getrlimit says %d", got, lim.Cur)
	}
	start := single(t, after, "process_start_time_seconds")
	if now := float64(time.Now().UnixNano()) / 1e9; start > now+1 || start < now-3600 {
		t.Errorf("process_start_time_seconds = %v, now is %v: not the start of a test binary", start, now)
	}
	if single(t, before, "process_start_time_seconds") != start {
		t.Errorf("process_start_time_seconds moved between two reads")
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var rssKB float64
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fmt.Sscan(v, &rssKB)
		}
	}
	if rss := single(t, after, "process_resident_memory_bytes"); rss < rssKB*1024/2 || rss > rssKB*1024*2 {
		t.Errorf("process_resident_memory_bytes = %v, VmRSS says %v kB", rss, rssKB)
	}
	if vm := single(t, after, "process_virtual_memory_bytes"); vm < single(t, after, "process_resident_memory_bytes") {
		t.Errorf("process_virtual_memory_bytes = %v, less than resident", vm)
	}
}

func TestGo_WritesTheRuntimeFamilies(t *testing.T) {
	stop := make(chan struct{})
	const extra = 100
	for range extra {
		go func() { <-stop }()
	}
	defer close(stop)
	runtime.GC()
	fams, _ := parse(t, func(w *Writer) error { Go(w); return nil })

	if v := single(t, fams, "go_goroutines"); v < extra {
		t.Errorf("go_goroutines = %v with %d goroutines started and waiting", v, extra)
	}
	if v := fams["go_info"].GetMetric()[0].GetLabel()[0]; v.GetName() != "version" || v.GetValue() != runtime.Version() {
		t.Errorf("go_info label %v, want version=%s", v, runtime.Version())
	}
	if v := single(t, fams, "go_sched_gomaxprocs_threads"); v != float64(runtime.GOMAXPROCS(0)) {
		t.Errorf("go_sched_gomaxprocs_threads = %v, want %d", v, runtime.GOMAXPROCS(0))
	}
	for _, name := range []string{"go_threads", "go_memstats_alloc_bytes", "go_memstats_alloc_bytes_total", "go_memstats_mallocs_total",
		"go_memstats_frees_total", "go_memstats_heap_inuse_bytes", "go_memstats_sys_bytes", "go_memstats_next_gc_bytes"} {
		if v := single(t, fams, name); v <= 0 {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	if single(t, fams, "go_memstats_mallocs_total") < single(t, fams, "go_memstats_frees_total") {
		t.Errorf("more frees than mallocs")
	}
	if last := single(t, fams, "go_memstats_last_gc_time_seconds"); time.Since(time.Unix(0, int64(last*1e9))) > time.Minute {
		t.Errorf("go_memstats_last_gc_time_seconds = %v, not the GC just run", last)
	}
	gc := fams["go_gc_duration_seconds"]
	if gc.GetType() != dto.MetricType_SUMMARY {
		t.Fatalf("go_gc_duration_seconds is a %v, want a summary", gc.GetType())
	}
	s := gc.GetMetric()[0].GetSummary()
	if s.GetSampleCount() < 1 || len(s.GetQuantile()) != 5 || s.GetQuantile()[4].GetQuantile() != 1 ||
		s.GetQuantile()[4].GetValue() < s.GetQuantile()[0].GetValue() {
		t.Errorf("go_gc_duration_seconds = %v, want 5 quantiles and at least the GC just run", s)
	}
}
