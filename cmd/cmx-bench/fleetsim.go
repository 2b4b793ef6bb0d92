package main

// fleet-sim: a fleet of gateways that loses its broker at once, simulated with the agent's own
// reconnect policy (transport.ReconnectPolicy), seeded randomness and a virtual clock: no network,
// no sleeping. docs/benchmarks.md, "Fleet reconnection, simulated", has the method and the table.

import (
	"container/heap"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/cmx-agent/cmx-agent/transport"
)

// simParams is one simulated outage.
type simParams struct {
	Agents int
	// Capacity is the connects per second the cluster accepts; 0 = all of them.
	Capacity int
	// Burst is how many connects the cluster takes at once beyond its rate (0 = Capacity/10, what
	// it accepts in 100 ms).
	Burst  int
	Policy transport.ReconnectPolicy
	Seed   uint64
}

// simResult is what the cluster saw, counted in windows of the virtual clock starting at t = 0.
type simResult struct {
	Attempts, Refused int
	// Peak* are the most in any one-second window [k s, k+1 s).
	PeakAttemptsPerSec, PeakConnectsPerSec, PeakPullsPerSec int
	// PeakConnectsPer100ms is the most in any window [k·100 ms, (k+1)·100 ms), the measured fleet's
	// figure.
	PeakConnectsPer100ms int
	// HalfPulled and AllPulled are when half and all of the agents had pulled again.
	HalfPulled, AllPulled time.Duration
	// MostRefused is the most attempts one agent had refused.
	MostRefused int
}

// simEvent is an agent's next connection attempt.
type simEvent struct {
	at    time.Duration
	agent int32
}

type simQueue []simEvent

func (q simQueue) Len() int { return len(q) }
func (q simQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].agent < q[j].agent // ties in agent order: the run is the same for a seed
}
func (q simQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *simQueue) Push(x any)   { *q = append(*q, x.(simEvent)) }
func (q *simQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// cluster accepts connects at a rate with a burst: a token bucket kept in integers (GCRA), so a run
// is the same on every platform.
type cluster struct {
	interval time.Duration // virtual time one connect uses up; 0 = unlimited
	burst    time.Duration // how far ahead of the clock the bucket may be drawn
	tat      time.Duration // theoretical arrival time of the next connect
}

func newCluster(capacity, burst int) *cluster {
	if capacity <= 0 {
		return &cluster{}
	}
	if burst <= 0 {
		burst = max(1, capacity/10)
	}
	iv := time.Second / time.Duration(capacity)
	return &cluster{interval: iv, burst: time.Duration(burst-1) * iv}
}

func (c *cluster) accept(t time.Duration) bool {
	if c.interval == 0 {
		return true
	}
	if c.tat-c.burst > t {
		return false
	}
	c.tat = max(c.tat, t) + c.interval
	return true
}

// window counts events per window of the virtual clock.
type window struct {
	width  time.Duration
	counts []int
}

func (w *window) add(t time.Duration) {
	i := int(t / w.width)
	for len(w.counts) <= i {
		w.counts = append(w.counts, 0)
	}
	w.counts[i]++
}

func (w *window) peak() int {
	p := 0
	for _, n := range w.counts {
		p = max(p, n)
	}
	return p
}

// simulate runs one outage: every agent's connection is lost at t = 0 and it reconnects as the
// agent does (transport.Session.Run): the first attempt after the policy's delay for a lost
// connection, each refused one after the delay for that many refusals in a row. An accepted agent
// pulls right after connecting (the SUBACK's round trip, milliseconds, is not modelled) and its pull
// counts as answered: the engine's pull repeat (30 s doubling) never comes into play.
func simulate(p simParams) simResult {
	r := rand.New(rand.NewPCG(p.Seed, p.Seed^0x9e3779b97f4a7c15))
	cl := newCluster(p.Capacity, p.Burst)
	refused := make([]int, p.Agents)
	q := make(simQueue, 0, p.Agents)
	for i := range p.Agents {
		q = append(q, simEvent{at: p.Policy.Delay(0, r), agent: int32(i)})
	}
	heap.Init(&q)
	attempts := window{width: time.Second}
	connects := window{width: time.Second}
	connects100 := window{width: 100 * time.Millisecond}
	pulls := window{width: time.Second}
	var res simResult
	pulled := 0
	for q.Len() > 0 {
		ev := q[0]
		res.Attempts++
		attempts.add(ev.at)
		if !cl.accept(ev.at) {
			res.Refused++
			refused[ev.agent]++
			res.MostRefused = max(res.MostRefused, refused[ev.agent])
			q[0].at = ev.at + p.Policy.Delay(refused[ev.agent], r)
			heap.Fix(&q, 0)
			continue
		}
		heap.Pop(&q)
		connects.add(ev.at)
		connects100.add(ev.at)
		pulls.add(ev.at)
		pulled++
		if pulled == (p.Agents+1)/2 {
			res.HalfPulled = ev.at
		}
		res.AllPulled = ev.at
	}
	res.PeakAttemptsPerSec = attempts.peak()
	res.PeakConnectsPerSec = connects.peak()
	res.PeakConnectsPer100ms = connects100.peak()
	res.PeakPullsPerSec = pulls.peak()
	return res
}

// runFleetSim is `cmx-bench fleet-sim`: the table of docs/benchmarks.md.
func runFleetSim(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cmx-bench fleet-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agents := fs.Int("agents", 100_000, "gateways that lose the broker at t = 0")
	capacities := fs.String("capacity", "unlimited,10000,2000", "connects per second the cluster accepts, comma-separated (unlimited = all)")
	spreads := fs.String("spread", "0,5s,30s,60s,120s", "values of broker.reconnect_spread, comma-separated")
	seed := fs.Uint64("seed", 1, "seed of the random delays")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	caps, err := parseCapacities(*capacities)
	if err != nil || *agents < 1 {
		fmt.Fprintln(stderr, "cmx-bench fleet-sim: --agents >= 1; --capacity: positive integers or unlimited:", err)
		return 2
	}
	var sps []time.Duration
	for _, s := range strings.Split(*spreads, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil || d < 0 {
			fmt.Fprintf(stderr, "cmx-bench fleet-sim: --spread: %q is not a duration >= 0\n", s)
			return 2
		}
		sps = append(sps, d)
	}
	fmt.Fprintf(stdout, "%d agents, seed %d; windows of 1 s from the loss at t = 0\n\n", *agents, *seed)
	fmt.Fprintln(stdout, "| cluster accepts | spread | peak attempts/s | peak connects/s (per 100 ms) | peak pulls/s | refused attempts | most refused, one agent | half pulled | all pulled |")
	fmt.Fprintln(stdout, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range caps {
		for _, sp := range sps {
			res := simulate(simParams{Agents: *agents, Capacity: c, Policy: transport.NewReconnectPolicy(sp), Seed: *seed})
			fmt.Fprintf(stdout, "| %s | %g s | %d | %d (%d) | %d | %d | %d | %.1f s | %.1f s |\n",
				capacityLabel(c), sp.Seconds(), res.PeakAttemptsPerSec, res.PeakConnectsPerSec, res.PeakConnectsPer100ms,
				res.PeakPullsPerSec, res.Refused, res.MostRefused, res.HalfPulled.Seconds(), res.AllPulled.Seconds())
		}
	}
	return 0
}

func parseCapacities(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "unlimited" {
			out = append(out, 0)
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > int(time.Second) {
			return nil, fmt.Errorf("capacity %q: want 1 to 1e9 or unlimited", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func capacityLabel(c int) string {
	if c == 0 {
		return "all"
	}
	return fmt.Sprintf("%d/s", c)
}
