// Package backoff is the agent's one exponential backoff with jitter: the n-th delay is drawn from
// [d/2, d], where d is Min doubled n-1 times, at most Max. Drawing from the upper half keeps a
// fleet's retries apart while no delay falls far below the one intended.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy bounds a backoff.
type Policy struct {
	Min, Max time.Duration
}

// Ceiling is the n-th delay's upper bound (n ≥ 1): Min doubled n-1 times, at most Max.
func (p Policy) Ceiling(n int) time.Duration {
	d := p.Min
	for i := 1; i < n && d > 0 && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// Nth draws the n-th delay (n ≥ 1) from [Ceiling(n)/2, Ceiling(n)] with r (nil: math/rand/v2's
// global source).
func (p Policy) Nth(n int, r *rand.Rand) time.Duration { return jitter(p.Ceiling(n), r) }

// jitter draws a delay from [d/2, d] with r (nil: math/rand/v2's global source).
func jitter(d time.Duration, r *rand.Rand) time.Duration {
	half := d / 2
	return half + time.Duration(Int64N(r, int64(d-half)+1))
}

// Int64N is r.Int64N(n), or the global source's when r is nil; 0 when n ≤ 0.
func Int64N(r *rand.Rand, n int64) int64 {
	switch {
	case n <= 0:
		return 0
	case r == nil:
		return rand.Int64N(n)
	}
	return r.Int64N(n)
}

// Backoff counts the delays of one run of retries under a policy; its zero value needs Policy set.
type Backoff struct {
	Policy
	// Rand draws the jitter; nil uses math/rand/v2's global source.
	Rand *rand.Rand
	n    int
}

// Next returns the next delay: the first is drawn under Min, each later one under twice the one
// before, up to Max.
func (b *Backoff) Next() time.Duration {
	b.n++
	return b.Nth(b.n, b.Rand)
}

// Reset starts the retries over from Min.
func (b *Backoff) Reset() { b.n = 0 }
