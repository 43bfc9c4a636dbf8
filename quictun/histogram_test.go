package quictun

import (
	"testing"
	"time"
)

func TestHistogram(t *testing.T) {
	var h Histogram
	for _, d := range []time.Duration{100 * time.Microsecond, 800 * time.Microsecond, 800 * time.Microsecond, 3 * time.Millisecond, time.Minute} {
		h.Observe(d)
	}
	s := h.Snapshot()
	if s.Count != 5 || s.Sum != 100*time.Microsecond+1600*time.Microsecond+3*time.Millisecond+time.Minute {
		t.Fatalf("count %d sum %v", s.Count, s.Sum)
	}
	want := map[int]uint64{0: 1, 2: 2, 4: 1, len(latencyBounds): 1}
	for i, n := range s.Counts {
		if n != want[i] {
			t.Errorf("bucket %d (≤ %v) = %d, want %d", i, append(latencyBounds, 0)[i], n, want[i])
		}
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.2, 250 * time.Microsecond}, {0.5, time.Millisecond}, {0.8, 5 * time.Millisecond}, {1, 10 * time.Second}} {
		if got := s.Quantile(tt.q); got != tt.want {
			t.Errorf("Quantile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if (HistogramSnapshot{}).Quantile(0.5) != 0 {
		t.Error("empty histogram has a quantile")
	}
}
