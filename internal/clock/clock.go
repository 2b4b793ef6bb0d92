// Package clock is the one source of time of the agent's core: the wall clock it stamps records
// with and every timer it waits on. The core takes a Clock in its options; production passes Real,
// tests pass clocktest.Clock, which moves only when the test advances it, so a test waits out a
// five-minute backoff in microseconds and the order of timers stays the one real time would give.
package clock

import (
	"context"
	"time"
)

// Clock tells the time and makes timers.
type Clock interface {
	// Now is the current wall-clock time.
	Now() time.Time
	// NewTimer returns a timer whose C receives the time once d has passed.
	NewTimer(d time.Duration) Timer
	// AfterFunc calls f in its own goroutine once d has passed; the timer's C is nil.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a single event, as time.Timer. Stop and Reset follow time.Timer's rules since Go 1.23:
// after either returns, no stale time is received from C.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
}

// Real is the system's clock.
type Real struct{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// NewTimer returns a time.Timer.
func (Real) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

// AfterFunc returns time.AfterFunc's timer.
func (Real) AfterFunc(d time.Duration, f func()) Timer { return realTimer{time.AfterFunc(d, f)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time        { return r.t.C }
func (r realTimer) Stop() bool                 { return r.t.Stop() }
func (r realTimer) Reset(d time.Duration) bool { return r.t.Reset(d) }

// OrReal returns c, or Real when c is nil: the default of an options struct.
func OrReal(c Clock) Clock {
	if c == nil {
		return Real{}
	}
	return c
}

// Sleep waits d on c, or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, c Clock, d time.Duration) bool {
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

// After returns a channel that receives the time once d has passed on c. The timer is not stopped
// when nobody reads it any more; use it only where that is cheap (a few per connection).
func After(c Clock, d time.Duration) <-chan time.Time { return c.NewTimer(d).C() }
