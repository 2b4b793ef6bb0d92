package engine

import (
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cmx-agent/cmx-agent/store"
)

// refusals count refused configurations by reason: one counter per reason, made up front and
// never changed, so counting takes no lock.
type refusals[K comparable] map[K]*atomic.Uint64

func newRefusals[K comparable](reasons []K) refusals[K] {
	c := refusals[K]{}
	for _, k := range reasons {
		c[k] = new(atomic.Uint64)
	}
	return c
}

// count adds a refusal for reason k; one that is not among the reasons is not counted.
func (c refusals[K]) count(k K) {
	if n := c[k]; n != nil {
		n.Add(1)
	}
}

// snapshot returns every reason's count, zeros included.
func (c refusals[K]) snapshot() map[K]uint64 {
	out := make(map[K]uint64, len(c))
	for k, n := range c {
		out[k] = n.Load()
	}
	return out
}

// counters are an endpoint's running totals since the agent started.
type counters struct {
	received, applied, superseded, rejected, failed, driftRepairs atomic.Uint64
	// holdsReleased counts the held acknowledgements released at the hold bound, their apply
	// still running.
	holdsReleased atomic.Uint64
}

// count adds one outcome with code c.
func (c *counters) count(code store.Code) {
	switch {
	case code == store.CodeOK:
		c.applied.Add(1)
	case code == store.CodeSuperseded:
		c.superseded.Add(1)
	case code.Transient():
		c.failed.Add(1)
	default:
		c.rejected.Add(1)
	}
}

// ApplyBuckets are the upper bounds, in seconds, of the apply duration histogram: from a write of a
// small file on a quiet disk to a hook near its default timeout.
var ApplyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// histogram counts durations into ApplyBuckets.
type histogram struct {
	mu     sync.Mutex
	counts []uint64 // per bucket, not cumulative; one more for +Inf
	sum    float64
	n      uint64
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.counts == nil {
		h.counts = make([]uint64, len(ApplyBuckets)+1)
	}
	i := sort.SearchFloat64s(ApplyBuckets, s)
	h.counts[i]++
	h.sum += s
	h.n++
}

// Histogram is a snapshot: Cumulative[i] counts the observations ≤ ApplyBuckets[i].
type Histogram struct {
	Cumulative []uint64
	Sum        float64
	Count      uint64
}

func (h *histogram) snapshot() Histogram {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := Histogram{Cumulative: make([]uint64, len(ApplyBuckets)), Sum: h.sum, Count: h.n}
	var run uint64
	for i := range ApplyBuckets {
		if h.counts != nil {
			run += h.counts[i]
		}
		out.Cumulative[i] = run
	}
	return out
}

// EndpointStats is one endpoint in Stats.
type EndpointStats struct {
	Key       string
	AppliedID string    // as people read it; "" when none (or applied without an id)
	Applied   bool      // a configuration is applied
	AppliedAt time.Time // when the last apply (or unchanged confirmation) was committed
	// Totals since the agent started.
	Received, Ok, Superseded, Rejected, Failed, DriftRepairs uint64
	// Damaged says why the endpoint's state record does not read ("" when it does).
	Damaged string
	// ApplyingSince is when the apply in progress started; zero when none runs.
	ApplyingSince time.Time
}

// Stats is what the engine reports for metrics.
type Stats struct {
	Endpoints      []EndpointStats // sorted by key
	ApplyDurations Histogram       // every apply that ran the pipeline, unchanged ones included
	OutboxDepth    int             // answers not yet acknowledged by the broker
	OutboxOldest   time.Time       // when the oldest of them was made; zero when none
	// OutboxSetAside counts the answers among them set aside: a publish of each ended the
	// connection PoisonCloses times in a row, so it is retried only after hours.
	OutboxSetAside int
	DatabaseBytes  int64
	// HeldReleased counts the acknowledgements released at the hold bound, their apply still
	// running (Options.HoldBound), across endpoints.
	HeldReleased uint64
}

// Stats reads the counters and the committed state. It is cheap enough for a scrape every few
// seconds with 1,000 endpoints: one read transaction and no decoding of bodies.
func (e *Engine) Stats() (Stats, error) {
	var st Stats
	eps := e.endpointList()
	err := e.store.View(func(tx *store.Tx) error {
		for _, ep := range eps {
			es := tx.StateOrRebuilt(ep.key)
			st.Endpoints = append(st.Endpoints, EndpointStats{
				Key: ep.key, AppliedID: es.AppliedText, Applied: es.AppliedHash != "", AppliedAt: es.AppliedAt,
				Received: ep.stats.received.Load(), Ok: ep.stats.applied.Load(), Superseded: ep.stats.superseded.Load(),
				Rejected: ep.stats.rejected.Load(), Failed: ep.stats.failed.Load(), DriftRepairs: ep.stats.driftRepairs.Load(),
				Damaged: es.Damaged,
			})
			last := &st.Endpoints[len(st.Endpoints)-1]
			_, last.ApplyingSince = ep.applying.get()
			st.HeldReleased += ep.stats.holdsReleased.Load()
		}
		return nil
	})
	if err != nil {
		return Stats{}, err
	}
	st.ApplyDurations = e.applyTimes.snapshot()
	st.OutboxDepth, st.OutboxOldest = e.out.depth()
	st.OutboxSetAside = e.out.setAside()
	if fi, err := os.Stat(e.store.Path()); err == nil {
		st.DatabaseBytes = fi.Size()
	}
	return st, nil
}
