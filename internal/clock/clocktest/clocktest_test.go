package clocktest

import (
	"slices"
	"testing"
	"time"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func received(t *testing.T, c <-chan time.Time) (time.Time, bool) {
	t.Helper()
	select {
	case v := <-c:
		return v, true
	default:
		return time.Time{}, false
	}
}

func TestClock_TimersFireOnlyWhenAdvancedPastTheirDeadline(t *testing.T) {
	c := New(epoch)
	tm := c.NewTimer(time.Second)
	c.Advance(999 * time.Millisecond)
	if _, ok := received(t, tm.C()); ok {
		t.Fatal("fired before its deadline")
	}
	c.Advance(time.Millisecond)
	if v, ok := received(t, tm.C()); !ok || !v.Equal(epoch.Add(time.Second)) {
		t.Fatalf("fired %v %v, want at %v", v, ok, epoch.Add(time.Second))
	}
	if got := c.Now(); !got.Equal(epoch.Add(time.Second)) {
		t.Errorf("Now = %v", got)
	}
}

func TestClock_AdvanceFiresInDeadlineOrderAndTheClockReadsEachDeadline(t *testing.T) {
	c := New(epoch)
	fired := make(chan time.Duration, 3)
	for _, d := range []time.Duration{3 * time.Second, time.Second, 2 * time.Second} {
		c.AfterFunc(d, func() { fired <- c.Now().Sub(epoch) })
		// AfterFunc runs f in a goroutine: wait for each before the next fires, to see the order.
	}
	var got []time.Duration
	for range 3 {
		d, ok := c.next()
		if !ok {
			t.Fatal("no timer armed")
		}
		c.Advance(d)
		got = append(got, <-fired)
	}
	if want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}; !slices.Equal(got, want) {
		t.Errorf("fired at %v, want %v", got, want)
	}
	if _, ok := c.next(); ok {
		t.Error("a timer is still armed")
	}
}

func TestClock_StopAndResetDropAStaleFire(t *testing.T) {
	c := New(epoch)
	tm := c.NewTimer(time.Second)
	c.Advance(time.Second) // fired, not received
	if tm.Stop() {
		t.Error("Stop of a fired timer reported it armed")
	}
	if _, ok := received(t, tm.C()); ok {
		t.Error("a stale time was received after Stop")
	}
	tm.Reset(time.Second)
	c.Advance(time.Second)
	if d, ok := c.next(); ok {
		t.Errorf("a timer armed (%v left) after the fire", d)
	}
	if was := tm.Reset(5 * time.Second); was {
		t.Error("Reset of a fired timer reported it armed")
	}
	if _, ok := received(t, tm.C()); ok {
		t.Error("a stale time was received after Reset")
	}
	if d, ok := c.next(); !ok || d != 5*time.Second {
		t.Errorf("armed %v (%v), want 5s", d, ok)
	}
	if !tm.Stop() {
		t.Error("Stop of an armed timer reported it idle")
	}
	c.Advance(time.Hour)
	if _, ok := received(t, tm.C()); ok {
		t.Error("a stopped timer fired")
	}
}

func TestClock_ATimerOfZeroFiresAtOnce(t *testing.T) {
	c := New(epoch)
	if _, ok := received(t, c.NewTimer(0).C()); !ok {
		t.Error("NewTimer(0) did not fire")
	}
	done := make(chan struct{})
	c.AfterFunc(-time.Second, func() { close(done) })
	<-done
}

func TestClock_AdvanceUntilLetsTimersArmedOnTheWayFire(t *testing.T) {
	c := New(epoch)
	// A chain of backoff-like timers, each armed by the previous one's function.
	n := 0
	done := make(chan struct{})
	var next func()
	next = func() {
		n++
		if n == 5 {
			close(done)
			return
		}
		c.AfterFunc(time.Duration(n)*time.Minute, next)
	}
	c.AfterFunc(time.Minute, next)
	c.AdvanceUntil(t, 5*time.Second, 10*time.Second, func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
	if c.Now().Sub(epoch) < 11*time.Minute {
		t.Errorf("clock at %v, want at least 11 min", c.Now().Sub(epoch))
	}
}

func TestClock_DriveMovesTheClockUntilTheTestEnds(t *testing.T) {
	c := New(epoch)
	fired := make(chan struct{})
	c.AfterFunc(time.Hour, func() { close(fired) })
	t.Run("driven", func(t *testing.T) {
		c.Drive(t, time.Minute)
		<-fired // an hour of the clock in about 60 ms
	})
	at := c.Now()
	c.AfterFunc(time.Millisecond, func() { t.Error("fired after the driving test ended") })
	if !c.Now().Equal(at) {
		t.Errorf("clock moved from %v to %v after the driving test ended", at, c.Now())
	}
}

// Driven, functions due at different deadlines run in their order, however large the step: the
// driver stops at every deadline for a real millisecond.
func TestClock_DriveRunsEachDeadlineOnItsOwnAndInOrder(t *testing.T) {
	c := New(epoch)
	type fire struct {
		n  int
		at time.Duration
	}
	got := make(chan fire, 2)
	c.AfterFunc(20*time.Millisecond, func() { got <- fire{2, c.Now().Sub(epoch)} })
	c.AfterFunc(10*time.Millisecond, func() { got <- fire{1, c.Now().Sub(epoch)} })
	c.Drive(t, time.Hour)
	first, second := <-got, <-got
	if first.n != 1 || second.n != 2 || first.at < 10*time.Millisecond || second.at < 20*time.Millisecond {
		t.Errorf("fired %+v then %+v, want 1 (at 10ms or later) then 2 (at 20ms or later)", first, second)
	}
}
