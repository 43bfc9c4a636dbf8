package quictun

import (
	"sync/atomic"
	"time"
)

// latencyBounds are the upper bounds of Histogram's buckets: from well
// under a loopback round trip to the longest timeouts.
var latencyBounds = []time.Duration{
	250 * time.Microsecond, 500 * time.Microsecond, time.Millisecond, 2500 * time.Microsecond,
	5 * time.Millisecond, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond, time.Second,
	2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Histogram counts durations in fixed buckets (latencyBounds). It is safe
// for concurrent use and lock-free, so the session path can afford it.
type Histogram struct {
	counts [16]atomic.Uint64 // len(latencyBounds)+1: the last is +Inf
	sum    atomic.Int64      // nanoseconds
}

// Observe counts d.
func (h *Histogram) Observe(d time.Duration) {
	i := 0
	for i < len(latencyBounds) && d > latencyBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

// HistogramSnapshot is a Histogram's state: Counts[i] durations fell at
// or under Bounds[i] (and over the bound before); the last count is above
// every bound.
type HistogramSnapshot struct {
	Bounds []time.Duration
	Counts []uint64
	Count  uint64
	Sum    time.Duration
}

// Snapshot returns the histogram's counts so far.
func (h *Histogram) Snapshot() HistogramSnapshot {
	s := HistogramSnapshot{Bounds: latencyBounds, Counts: make([]uint64, len(latencyBounds)+1), Sum: time.Duration(h.sum.Load())}
	for i := range s.Counts {
		s.Counts[i] = h.counts[i].Load()
		s.Count += s.Counts[i]
	}
	return s
}

// Quantile estimates the q-quantile (0 < q ≤ 1) as the upper bound of the
// bucket holding it; 0 when empty, and the largest bound when it lies
// above them all.
func (s HistogramSnapshot) Quantile(q float64) time.Duration {
	if s.Count == 0 {
		return 0
	}
	rank := uint64(q*float64(s.Count) + 0.5)
	var seen uint64
	for i, n := range s.Counts {
		seen += n
		if seen >= rank && i < len(s.Bounds) {
			return s.Bounds[i]
		}
	}
	return s.Bounds[len(s.Bounds)-1]
}
