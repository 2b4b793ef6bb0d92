package main

import (
	"fmt"
	"strings"
	"time"
)

// diskCost is what a process did to the disk over n sequential pushes.
type diskCost struct {
	n         int
	calls     map[string]int // sync calls by name, from strace -c
	write     int64          // write_bytes delta of /proc/<pid>/io
	cancelled int64          // cancelled_write_bytes delta
}

// minus is the cost of the pushes c has beyond o: what is paid once per window (the deletion
// commit after the last push) cancels.
func (c diskCost) minus(o diskCost) diskCost {
	d := diskCost{n: c.n - o.n, calls: map[string]int{}, write: c.write - o.write, cancelled: c.cancelled - o.cancelled}
	for name, k := range c.calls {
		d.calls[name] = k - o.calls[name]
	}
	return d
}

func (c diskCost) syncPerPush() float64 {
	total := 0
	for _, n := range c.calls {
		total += n
	}
	return float64(total) / float64(c.n)
}

func (c diskCost) kibPerPush() float64 { return float64(c.write) / 1024 / float64(c.n) }

// breakdown names the sync calls per push, e.g. "fdatasync 2.00 + fsync 2.00".
func (c diskCost) breakdown() string {
	var parts []string
	for _, name := range syncCalls {
		if n := c.calls[name]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %.2f", name, float64(n)/float64(c.n)))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " + ")
}

// quiet is how long the disk is watched after the last push's confirmation: the agent deletes an
// acknowledged answer with the next commit or after 1 s of quiet, and that commit is part of the push.
const quiet = 1500 * time.Millisecond

// measureDisk pushes n times, one after the other, to app/token, whose responder is process pid,
// with strace counting pid's sync calls and /proc/pid/io its bytes written. Pushes follow each
// other at once, or, spaced, each after the quiet time of the one before.
func (r *runner) measureDisk(pid int, app, token string, n int, spaced bool) (diskCost, error) {
	tr, err := startSyncTrace(pid, r.dir)
	if err != nil {
		return diskCost{}, err
	}
	w0, c0, err := procIO(pid)
	for i := 0; err == nil && i < n; i++ {
		if _, err = r.pushWait(app, token); err == nil && (spaced || i == n-1) {
			time.Sleep(quiet)
		}
	}
	w1, c1, ioErr := procIO(pid)
	calls, trErr := tr.stop()
	for _, e := range []error{err, ioErr, trErr} {
		if e != nil {
			return diskCost{}, e
		}
	}
	return diskCost{n: n, calls: calls, write: w1 - w0, cancelled: c1 - c0}, nil
}

// disk: sync calls and bytes written per push, for the agent on its held path (an endpoint without
// hook: one commit per push) and on its committed path (an endpoint with a hook: a receive commit
// and a result commit), against the floor.
func (r *runner) disk() error {
	const app, floorApp = "disk", "diskfloor"
	plain, hooked := "gw-plain", "gw-hook"
	a, _, err := r.startAgentWait(app, []string{plain, hooked}, "64KiB", false, hooked)
	if err != nil {
		return err
	}
	defer a.stop()
	fl, err := startFloor(r.broker.url, floorApp, mkdir(r.dir, floorApp), floorParallel)
	if err != nil {
		return err
	}
	defer fl.stop()
	// Warm-up: an endpoint's first write also records the file it replaces, and the database
	// grows to its working size.
	const warm = 10
	sides := []struct {
		app, token string
		pid        int
	}{{app, plain, a.pid()}, {app, hooked, a.pid()}, {floorApp, plain, fl.pid()}}
	for _, s := range sides {
		for range warm {
			if _, err := r.pushWait(s.app, s.token); err != nil {
				return fmt.Errorf("disk warm-up: %w\n%s", err, a.logTail())
			}
		}
	}
	time.Sleep(quiet)
	// Pushes in a row: the cost per push is the difference between a window of 2n pushes and one
	// of n, so the deletion commit after the last push of a window cancels. Lone pushes (each
	// after the quiet time of the one before, as a gateway gets them) pay their own deletion.
	n := r.p.Disk
	lone := max(5, n/10)
	r.logf("disk: %d + %d pushes in a row of %d B each to the agent (no hook, hook) and the floor, and %d lone pushes, under strace",
		n, 2*n, pushBodyBytes, lone)
	var costs []diskCost
	for _, s := range sides {
		c1, err := r.measureDisk(s.pid, s.app, s.token, n, false)
		if err != nil {
			return fmt.Errorf("disk %s/%s: %w\n%s", s.app, s.token, err, a.logTail())
		}
		c2, err := r.measureDisk(s.pid, s.app, s.token, 2*n, false)
		if err != nil {
			return fmt.Errorf("disk %s/%s: %w\n%s", s.app, s.token, err, a.logTail())
		}
		costs = append(costs, c2.minus(c1))
	}
	single, err := r.measureDisk(a.pid(), app, plain, lone, true)
	if err != nil {
		return fmt.Errorf("disk, lone pushes: %w\n%s", err, a.logTail())
	}
	held, committed, floor := costs[0], costs[1], costs[2]
	how := fmt.Sprintf("strace -f -c; pushes in a row, (%d pushes − %d pushes) / %d", 2*n, n, n)
	r.rep.limitFloor("sync calls per push, held path (no hook)", "calls", held.syncPerPush(), floor.syncPerPush(), targetSyncCalls,
		fmt.Sprintf("%s; agent %s, floor %s", how, held.breakdown(), floor.breakdown()))
	r.rep.limitFloor(`sync calls per push, committed path (hook = ["true"])`, "calls", committed.syncPerPush(), floor.syncPerPush(), 0,
		fmt.Sprintf("%s; agent %s", how, committed.breakdown()))
	loneHow := fmt.Sprintf("%d pushes, each %v after the confirmation of the one before", lone, quiet)
	r.rep.limitFloor("sync calls per push, held path, lone pushes", "calls", single.syncPerPush(), floor.syncPerPush(), targetSyncCalls,
		fmt.Sprintf("strace -f -c; %s; agent %s", loneHow, single.breakdown()))
	how = fmt.Sprintf("write_bytes of /proc/PID/io; pushes in a row, (%d − %d) / %d", 2*n, n, n)
	cancelled := func(c diskCost) string {
		return fmt.Sprintf("%.1f KiB", float64(c.cancelled)/1024/float64(c.n))
	}
	r.rep.ratio("bytes written per push, held path (no hook)", "KiB", held.kibPerPush(), floor.kibPerPush(), targetWriteBytes,
		fmt.Sprintf("%s; cancelled per push: agent %s, floor %s", how, cancelled(held), cancelled(floor)))
	r.rep.ratio(`bytes written per push, committed path (hook = ["true"])`, "KiB", committed.kibPerPush(), floor.kibPerPush(), 0,
		fmt.Sprintf("%s; cancelled per push: agent %s", how, cancelled(committed)))
	r.rep.ratio("bytes written per push, held path, lone pushes", "KiB", single.kibPerPush(), floor.kibPerPush(), targetWriteBytes,
		fmt.Sprintf("write_bytes of /proc/PID/io; %s", loneHow))
	for i, label := range []string{"held", "committed", "floor", "held, lone"} {
		c := append(costs, single)[i]
		r.logf("disk %s: %.2f sync calls (%s), %.1f KiB written per push", label, c.syncPerPush(), c.breakdown(), c.kibPerPush())
	}
	return nil
}
