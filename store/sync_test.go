package store

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The test binary doubles as the helper process that commits under strace.
const (
	helperEnv       = "CMX_STORE_TEST_HELPER" // "commit": what the child does instead of running the tests
	helperDirEnv    = "CMX_STORE_TEST_DIR"    // the state folder it commits in
	helperNoSyncEnv = "CMX_STORE_TEST_NOSYNC" // set: bbolt's NoSync, to show that the check sees it
)

func TestMain(m *testing.M) {
	if what := os.Getenv(helperEnv); what != "" {
		if err := helperMain(what, os.Getenv(helperDirEnv)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// commitKinds are the ways a caller commits; each must be on disk when it returns.
var commitKinds = []struct {
	name string
	run  func(*Store, func(*Tx) error) error
}{
	{"update", (*Store).Update},
	{"batch", (*Store).Batch},
}

// helperMain commits once in each way, between two marks that strace sees: an open of a file
// named mark-begin-KIND and mark-end-KIND in dir (which fails, as no such file exists).
func helperMain(what, dir string) error {
	if what != "commit" {
		return fmt.Errorf("unknown helper %q", what)
	}
	st, err := OpenStore(dir, time.Second, 0)
	if err != nil {
		return err
	}
	defer st.Close()
	if os.Getenv(helperNoSyncEnv) != "" {
		st.db.NoSync = true
	}
	mark := func(name string) {
		if f, err := os.Open(filepath.Join(dir, "mark-"+name)); err == nil {
			f.Close()
		}
	}
	for _, k := range commitKinds {
		mark("begin-" + k.name)
		err := k.run(st, func(tx *Tx) error { return tx.SetState("gw", EndpointState{AppliedID: k.name}) })
		mark("end-" + k.name)
		if err != nil {
			return fmt.Errorf("%s: %w", k.name, err)
		}
	}
	return nil
}

// A commit is durable when Update or Batch returns: the last write to agent.db before it returns
// is followed by an fdatasync (or fsync) of agent.db, also before it returns. A file read back
// after a reopen cannot show this (the page cache answers without any sync), so the system calls
// are watched; and the same check run on a store with bbolt's NoSync must fail, or it proves
// nothing.
func TestCommit_IsSyncedToDiskBeforeItReturns(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed")
	}
	for _, tc := range []struct {
		name   string
		noSync bool
	}{
		{"as the agent opens it", false},
		{"with bbolt's NoSync, which the check must catch", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events := traceCommits(t, strace, tc.noSync)
			for _, k := range commitKinds {
				syncs, err := syncedBeforeReturn(events, k.name)
				t.Logf("%s: %d syncs of %s between the call and its return", k.name, syncs, DBName)
				switch {
				case tc.noSync && err == nil:
					t.Errorf("%s without syncs passed the check: it would not see a missing sync", k.name)
				case !tc.noSync && err != nil:
					t.Errorf("%s: %v", k.name, err)
				}
			}
		})
	}
}

// traceCommits runs helperMain under strace and returns what it did to agent.db, in order.
func traceCommits(t *testing.T, strace string, noSync bool) []traceEvent {
	t.Helper()
	dir := t.TempDir()
	trace := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command(strace, "-f", "-qq", "-y", "-o", trace, "-e", "trace=openat,pwrite64,fdatasync,fsync",
		os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=commit", helperDirEnv+"="+dir)
	if noSync {
		cmd.Env = append(cmd.Env, helperNoSyncEnv+"=1")
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "ptrace") || strings.Contains(string(out), "PTRACE") {
			t.Skipf("strace cannot trace here: %s", out)
		}
		t.Fatalf("the helper under strace: %v\n%s", err, out)
	}
	log, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	return traceEvents(string(log), filepath.Join(dir, DBName), filepath.Join(dir, "mark-"))
}

// traceEvent is one finished system call that matters here: a mark ("begin-update"), a write to
// the database ("write") or a sync of it ("sync").
type traceEvent string

// traceEvents reads an strace -f -y log. A call another thread interrupts is split in two lines,
// "name(args <unfinished ...>" and "<... name resumed>...) = result"; it counts when it finishes,
// with the arguments of its first half.
func traceEvents(log, db, markPrefix string) []traceEvent {
	unfinished := map[string]string{} // by thread id: the call's first half
	var out []traceEvent
	for _, line := range strings.Split(log, "\n") {
		tid, call, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		call = strings.TrimLeft(call, " ")
		if strings.HasSuffix(call, "<unfinished ...>") {
			unfinished[tid] = call
			continue
		}
		if strings.HasPrefix(call, "<... ") {
			call = unfinished[tid] // the resumed half says only that the call finished
			delete(unfinished, tid)
		}
		name, args, _ := strings.Cut(call, "(")
		switch {
		case name == "openat" && strings.Contains(args, `"`+markPrefix):
			mark, _, _ := strings.Cut(strings.SplitN(args, `"`+markPrefix, 2)[1], `"`)
			out = append(out, traceEvent(mark))
		case name == "pwrite64" && strings.HasPrefix(args, fdOf(args, db)):
			out = append(out, "write")
		case (name == "fdatasync" || name == "fsync") && strings.HasPrefix(args, fdOf(args, db)):
			out = append(out, "sync")
		}
	}
	return out
}

// fdOf returns the start of args when its first argument is a descriptor of path ("3</…/agent.db>"),
// and a string no args starts with otherwise.
func fdOf(args, path string) string {
	fd, _, ok := strings.Cut(args, "<"+path+">")
	if !ok || strings.ContainsAny(fd, ", ") {
		return "\x00"
	}
	return fd
}

// syncedBeforeReturn checks the commit of kind in events: between its begin and end marks there is
// a write to the database, and the last write is followed by a sync. It returns the number of syncs
// in the window.
func syncedBeforeReturn(events []traceEvent, kind string) (syncs int, err error) {
	begin, end := -1, -1
	for i, ev := range events {
		switch ev {
		case traceEvent("begin-" + kind):
			begin = i
		case traceEvent("end-" + kind):
			end = i
		}
	}
	if begin < 0 || end < begin {
		return 0, fmt.Errorf("the marks of the %s commit are not in the trace: %q", kind, events)
	}
	lastWrite, syncedAfter := -1, false
	for i, ev := range events[begin:end] {
		switch ev {
		case "write":
			lastWrite, syncedAfter = i, false
		case "sync":
			syncs++
			syncedAfter = lastWrite >= 0
		}
	}
	switch {
	case lastWrite < 0:
		return syncs, errors.New("no write to the database between the call and its return")
	case !syncedAfter:
		return syncs, fmt.Errorf("returned with its last write not synced: %q", events[begin:end+1])
	}
	return syncs, nil
}
