// Package clocktest is a clock.Clock for tests: its time moves only when the test advances it, and
// its timers fire then, in the order of their deadlines.
package clocktest

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/clock"
)

// Clock is a manual clock. Its zero value is not usable; call New.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*timer // armed, in no particular order
	seq    uint64   // arming order, to fire timers of the same deadline in the order they were armed
}

// New returns a clock reading start.
func New(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires when the clock has been advanced by d.
func (c *Clock) NewTimer(d time.Duration) clock.Timer {
	t := &timer{c: c, ch: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// AfterFunc returns a timer that calls f in its own goroutine when the clock has been advanced by d.
func (c *Clock) AfterFunc(d time.Duration, f func()) clock.Timer {
	t := &timer{c: c, f: f}
	t.Reset(d)
	return t
}

// Advance moves the clock by d, firing every timer due on the way, earliest first: a channel timer
// receives its deadline; an AfterFunc's function starts in its own goroutine, as time.AfterFunc's
// does, so the functions of timers due in one Advance may run in any order and read a later time.
// A test that needs them apart advances to one deadline at a time (Drive does).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for c.fireNext(end) {
	}
	c.mu.Lock()
	if end.After(c.now) {
		c.now = end
	}
	c.mu.Unlock()
}

// next returns the time left on the earliest armed timer, and false when none is armed.
func (c *Clock) next() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.earliest()
	if t == nil {
		return 0, false
	}
	return max(t.when.Sub(c.now), 0), true
}

// AdvanceUntil advances the clock by step at a time, letting the code under test run between
// steps, until cond holds; it fails the test when cond does not hold within timeout of real time.
// It is the test's stand-in for "wait until", where what is awaited needs time to pass.
func (c *Clock) AdvanceUntil(tb testing.TB, timeout, step time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met within %v of real time (clock advanced to %v)", timeout, c.Now())
		}
		c.Advance(step)
		<-tick.C
	}
}

// Drive advances the clock every millisecond of real time until the test ends, by step or to the
// next timer's deadline if that comes first: the code under test sees time run up to step/1ms
// times faster, and timers of different deadlines fire in their order, a real millisecond apart
// (the clock reads each one's deadline for that millisecond). It suits a test whose waits come one
// after another from code it does not step through (backoffs while files are written, debounces
// after file-system events); a test that knows which timer is next uses Advance.
func (c *Clock) Drive(tb testing.TB, step time.Duration) {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				d, ok := c.next()
				if !ok || d > step {
					d = step
				}
				c.Advance(d)
			}
		}
	}()
	tb.Cleanup(func() { close(stop); <-done })
}

// earliest returns the armed timer due first; c.mu must be held.
func (c *Clock) earliest() *timer {
	var first *timer
	for _, t := range c.timers {
		if first == nil || t.when.Before(first.when) || t.when.Equal(first.when) && t.seq < first.seq {
			first = t
		}
	}
	return first
}

// fireNext fires the earliest timer due by end; it reports whether there was one.
func (c *Clock) fireNext(end time.Time) bool {
	c.mu.Lock()
	t := c.earliest()
	if t == nil || t.when.After(end) {
		c.mu.Unlock()
		return false
	}
	if t.when.After(c.now) {
		c.now = t.when
	}
	c.remove(t)
	// Fired under the lock (a send that never blocks, or a new goroutine), so that a Stop or Reset
	// that returns after it finds the fire and drains it, as time.Timer promises.
	t.fire(c.now)
	c.mu.Unlock()
	return true
}

// remove disarms t; c.mu must be held. It reports whether t was armed.
func (c *Clock) remove(t *timer) bool {
	i := slices.Index(c.timers, t)
	if i < 0 {
		return false
	}
	c.timers = slices.Delete(c.timers, i, i+1)
	return true
}

type timer struct {
	c    *Clock
	ch   chan time.Time // nil for AfterFunc
	f    func()
	when time.Time
	seq  uint64
}

func (t *timer) C() <-chan time.Time { return t.ch }

func (t *timer) fire(now time.Time) {
	if t.f != nil {
		go t.f()
		return
	}
	select {
	case t.ch <- now:
	default:
	}
}

// Stop disarms the timer and drops a time fired but not received, as time.Timer does since Go 1.23.
func (t *timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	t.drain()
	return t.c.remove(t)
}

// Reset arms the timer to fire d from the clock's now; a timer due now fires at once.
func (t *timer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	was := t.c.remove(t)
	t.drain()
	t.when = t.c.now.Add(d)
	t.c.seq++
	t.seq = t.c.seq
	if d <= 0 {
		t.fire(t.c.now)
	} else {
		t.c.timers = append(t.c.timers, t)
	}
	t.c.mu.Unlock()
	return was
}

func (t *timer) drain() {
	if t.ch == nil {
		return
	}
	select {
	case <-t.ch:
	default:
	}
}
