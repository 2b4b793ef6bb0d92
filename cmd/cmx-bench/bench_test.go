package main

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/cmx"
)

func TestQuantile_IsTheNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for q, want := range map[float64]time.Duration{0.5: 50, 0.99: 99, 1: 100, 0: 1} {
		if got := quantile(d, q); got != want {
			t.Errorf("quantile(1..100, %v) = %v, want %v", q, got, want)
		}
	}
	if got := quantile(nil, 0.5); got != 0 {
		t.Errorf("quantile(nil) = %v, want 0", got)
	}
}

func TestBigPayload_IsAValidPushOfTheRequestedSize(t *testing.T) {
	const n = 1 << 20
	p := bigPayload("big-0", n, 0)
	if len(p) > n || len(p) < n-200 {
		t.Errorf("payload is %d bytes, want just under %d", len(p), n)
	}
	push, err := cmx.ParsePush(p, cmx.DefaultLimits(2*n))
	if err != nil {
		t.Fatalf("not a valid push: %v", err)
	}
	if push.ID.Text() != "big-0" {
		t.Errorf("id %q, want big-0", push.ID.Text())
	}
}

func TestLastConnected_ReadsTheLastConnectLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.log")
	log := `time=2026-11-25T14:35:16.227Z level=INFO msg="connected to broker" server=tcp://127.0.0.1:1
time=2026-11-25T14:35:17.000Z level=WARN msg="connection to broker lost" server=tcp://127.0.0.1:1
time=2026-11-25T14:35:17.731Z level=INFO msg="connected to broker" server=tcp://127.0.0.1:1
time=2026-11-25T14:35:18.000Z level=INFO msg="configuration applied"
`
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got, ok := lastConnected(path)
	want := time.Date(2026, 11, 25, 14, 35, 17, 731e6, time.UTC)
	if !ok || !got.Equal(want) {
		t.Errorf("lastConnected = %v, %v; want %v", got, ok, want)
	}
	if _, ok := lastConnected(filepath.Join(t.TempDir(), "none.log")); ok {
		t.Error("lastConnected of a missing log reports a time")
	}
}

func TestParseStraceSummary_CountsCallsPerName(t *testing.T) {
	out := `% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 76.03    0.000387         193       200           fdatasync
 23.97    0.000122         122       101         3 fsync
------ ----------- ----------- --------- --------- ----------------
100.00    0.000509         169       301         3 total
`
	got, err := parseStraceSummary([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["fdatasync"] != 200 || got["fsync"] != 101 {
		t.Errorf("parseStraceSummary = %v, want fdatasync 200, fsync 101 (and no total)", got)
	}
	// strace -c writes nothing when no traced call was made.
	if got, err := parseStraceSummary([]byte("\n")); err != nil || len(got) != 0 {
		t.Errorf("empty summary = %v, %v; want no calls, no error", got, err)
	}
	if _, err := parseStraceSummary([]byte("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n")); err == nil {
		t.Error("an strace error message is read as a summary")
	}
}

func TestParseProcIO_ReadsWriteAndCancelledBytes(t *testing.T) {
	io := "rchar: 6976\nwchar: 120\nsyscr: 10\nsyscw: 2\nread_bytes: 0\nwrite_bytes: 122880\ncancelled_write_bytes: 4096\n"
	w, c, err := parseProcIO([]byte(io))
	if err != nil || w != 122880 || c != 4096 {
		t.Errorf("parseProcIO = %d, %d, %v; want 122880, 4096", w, c, err)
	}
	if _, _, err := parseProcIO([]byte("rchar: 1\n")); err == nil {
		t.Error("a /proc/PID/io without write_bytes is accepted")
	}
	w, _, err = procIO(os.Getpid())
	if err != nil || w < 0 {
		t.Errorf("procIO(self) = %d, %v", w, err)
	}
}

func TestParseProcStat_AddsUserAndSystemTime(t *testing.T) {
	// The command name may hold spaces and parentheses; utime 250 and stime 50 ticks.
	stat := "4242 (cmx (agent) x) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 50 0 0 20 0 9 0 123 1000000 2000 18446744073709551615\n"
	got, err := parseProcStat([]byte(stat))
	if err != nil || got != 3*time.Second {
		t.Errorf("parseProcStat = %v, %v; want 3s", got, err)
	}
	if _, err := parseProcStat([]byte("4242 (x) S 1 2")); err == nil {
		t.Error("a truncated stat line is accepted")
	}
	if _, err := procCPU(os.Getpid()); err != nil {
		t.Errorf("procCPU(self): %v", err)
	}
}

func TestPushBody_IsAValidPushOf256Bytes(t *testing.T) {
	for _, seq := range []int{1, 99999} {
		p := pushBody(seq)
		if len(p) != pushBodyBytes {
			t.Errorf("pushBody(%d) is %d bytes, want %d", seq, len(p), pushBodyBytes)
		}
		push, err := cmx.ParsePush(p, cmx.DefaultLimits(1<<16))
		if err != nil {
			t.Fatalf("pushBody(%d) is not a valid push: %v", seq, err)
		}
		if push.ID.Key() != strconv.Itoa(seq) {
			t.Errorf("id %q, want %d", push.ID.Key(), seq)
		}
	}
}

func TestDiskCost_TheDifferenceOfTwoWindowsLeavesTheirCommonPartOut(t *testing.T) {
	// Each window ends with one deletion commit (2 fdatasyncs, 40 KiB) after its last push.
	short := diskCost{n: 10, calls: map[string]int{"fsync": 20, "fdatasync": 22}, write: 10*45<<10 + 40<<10}
	long := diskCost{n: 20, calls: map[string]int{"fsync": 40, "fdatasync": 42}, write: 20*45<<10 + 40<<10}
	d := long.minus(short)
	if d.n != 10 || d.syncPerPush() != 4 || d.kibPerPush() != 45 {
		t.Errorf("per push: %v sync calls, %v KiB over %d; want 4, 45 over 10", d.syncPerPush(), d.kibPerPush(), d.n)
	}
	if got := d.breakdown(); got != "fsync 2.00 + fdatasync 2.00" {
		t.Errorf("breakdown %q", got)
	}
}

func TestReport_LimitFloorAndNotJudged(t *testing.T) {
	var r report
	r.limitFloor("calls", "calls", 6, 2, 4, "")
	m := r.Metrics[0]
	if m.Floor == nil || *m.Floor != 2 || m.Ratio == nil || *m.Ratio != 3 || m.Target != "≤ 4.00 calls" || m.Result != "MISS" {
		t.Errorf("limitFloor: %+v", m)
	}
	r.limitFloor("idle", "%", 0.1, 0, 0.25, "")
	r.notJudged("at 1,000 endpoints")
	m = r.Metrics[1]
	if m.Ratio != nil || m.Result != "" || m.Target != "≤ 0.25 % at 1,000 endpoints" {
		t.Errorf("limitFloor with a zero floor, not judged: %+v", m)
	}
}
