package backoff

import (
	"math/rand/v2"
	"testing"
	"time"
)

// Each delay lies in the upper half of its ceiling, which doubles from Min up to Max; Reset starts
// over; a seeded source gives the same delays again.
func TestBackoff_DoublesWithinTheUpperHalfUpToMaxAndResets(t *testing.T) {
	p := Policy{Min: time.Second, Max: 30 * time.Second}
	ceilings := []time.Duration{1, 2, 4, 8, 16, 30, 30}
	b := Backoff{Policy: p, Rand: rand.New(rand.NewPCG(1, 2))}
	var first []time.Duration
	for i, c := range ceilings {
		c *= time.Second
		if got := p.Ceiling(i + 1); got != c {
			t.Errorf("Ceiling(%d) = %v, want %v", i+1, got, c)
		}
		d := b.Next()
		if d < c/2 || d > c {
			t.Errorf("delay %d = %v, want within [%v, %v]", i+1, d, c/2, c)
		}
		first = append(first, d)
	}
	b.Reset()
	if d := b.Next(); d < 500*time.Millisecond || d > time.Second {
		t.Errorf("after Reset: %v, want within [0.5s, 1s]", d)
	}
	again := Backoff{Policy: p, Rand: rand.New(rand.NewPCG(1, 2))}
	for i, want := range first {
		if got := again.Next(); got != want {
			t.Errorf("same seed, delay %d = %v, want %v", i+1, got, want)
		}
	}
}

func TestJitter_StaysInTheUpperHalf(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 3, time.Second, time.Hour} {
		for range 100 {
			if got := jitter(d, nil); got < d/2 || got > d {
				t.Fatalf("jitter(%v) = %v, want within [%v, %v]", d, got, d/2, d)
			}
		}
	}
}
