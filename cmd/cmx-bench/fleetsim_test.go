package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/transport"
)

const simFleet = 100_000

func sim(capacity int, spread time.Duration) simResult {
	return simulate(simParams{Agents: simFleet, Capacity: capacity, Policy: transport.NewReconnectPolicy(spread), Seed: 1})
}

// With a cluster that takes everyone, the spread alone sets the load: N/S connects a second (a
// 15 % margin covers the randomness: at N = 100,000 and S = 60 s one second's count has σ ≈ 41 on
// 1,667), and everyone is back within S.
func TestFleetSim_TheSpreadBoundsThePeakAndTheRecovery(t *testing.T) {
	for _, s := range []time.Duration{5 * time.Second, 30 * time.Second, 60 * time.Second} {
		res := sim(0, s)
		perSec := float64(simFleet) / s.Seconds()
		if res.Refused != 0 || res.Attempts != simFleet {
			t.Errorf("spread %v: %d attempts, %d refused; want one attempt each", s, res.Attempts, res.Refused)
		}
		if float64(res.PeakConnectsPerSec) > 1.15*perSec || float64(res.PeakPullsPerSec) > 1.15*perSec {
			t.Errorf("spread %v: peak %d connects/s, %d pulls/s; want at most 1.15 × N/S = %.0f", s, res.PeakConnectsPerSec, res.PeakPullsPerSec, 1.15*perSec)
		}
		if res.AllPulled >= s {
			t.Errorf("spread %v: all pulled after %v, want within the spread", s, res.AllPulled)
		}
		if res.HalfPulled < s*45/100 || res.HalfPulled > s*55/100 {
			t.Errorf("spread %v: half pulled after %v, want about half the spread", s, res.HalfPulled)
		}
	}
}

// A cluster whose rate is at least twice what the spread asks of it (C ≥ 2 N/S) refuses nobody, or
// so few that one backoff step (ReconnectMin) brings them in.
func TestFleetSim_AClusterWithRoomForTheSpreadTakesEveryoneWithinIt(t *testing.T) {
	for _, c := range []struct {
		capacity int
		spread   time.Duration
	}{{10_000, 30 * time.Second}, {2_000, 120 * time.Second}} {
		if c.capacity*int(c.spread/time.Second) < 2*simFleet {
			t.Fatalf("case %+v does not have C ≥ 2 N/S", c)
		}
		res := sim(c.capacity, c.spread)
		if res.AllPulled > c.spread+transport.ReconnectMin {
			t.Errorf("%d/s, spread %v: all pulled after %v (%d refused), want within %v", c.capacity, c.spread, res.AllPulled, res.Refused, c.spread+transport.ReconnectMin)
		}
	}
}

// An overloaded cluster is never asked to accept more than its rate (plus its burst of 100 ms), and
// the backoff of the refused still brings everyone in: within the time the cluster needs for the
// whole fleet (N/C), the spread, and two capped backoff steps.
func TestFleetSim_AnOverloadedClusterGetsNoMoreThanItsRateAndEveryoneComesBack(t *testing.T) {
	const capacity = 2_000
	var attemptsNoSpread int
	for _, s := range []time.Duration{0, 5 * time.Second, 30 * time.Second} {
		res := sim(capacity, s)
		if max := capacity + capacity/10; res.PeakConnectsPerSec > max {
			t.Errorf("spread %v: %d connects in one second, want at most %d", s, res.PeakConnectsPerSec, max)
		}
		bound := simFleet/capacity*time.Second + s + 2*transport.ReconnectMax
		if res.AllPulled > bound {
			t.Errorf("spread %v: all pulled after %v, want within %v", s, res.AllPulled, bound)
		}
		if s == 0 {
			attemptsNoSpread = res.PeakAttemptsPerSec
		} else if s == 30*time.Second && res.PeakAttemptsPerSec*5 > attemptsNoSpread {
			t.Errorf("a 30 s spread: peak %d attempts/s against %d without, want at most a fifth", res.PeakAttemptsPerSec, attemptsNoSpread)
		}
	}
}

func TestFleetSim_TheSameSeedGivesTheSameRun(t *testing.T) {
	p := simParams{Agents: 20_000, Capacity: 2_000, Policy: transport.NewReconnectPolicy(5 * time.Second), Seed: 7}
	if a, b := simulate(p), simulate(p); a != b {
		t.Errorf("two runs of seed 7:\n%+v\n%+v", a, b)
	}
}

func TestFleetSim_PrintsARowPerClusterAndSpread(t *testing.T) {
	var out, errs bytes.Buffer
	if code := runFleetSim([]string{"--agents", "1000", "--capacity", "unlimited,100", "--spread", "0,10s"}, &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	rows := 0
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "| all |") || strings.HasPrefix(l, "| 100/s |") {
			rows++
		}
	}
	if rows != 4 {
		t.Errorf("%d rows, want 4:\n%s", rows, out.String())
	}
	if code := runFleetSim([]string{"--spread", "-1s"}, &out, &errs); code != 2 {
		t.Errorf("a negative spread: exit %d, want 2", code)
	}
}
