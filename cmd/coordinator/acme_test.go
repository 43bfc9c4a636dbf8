package main

import (
	"io"
	"log/slog"
	"testing"
	"time"
)

// TestACMEDecision checks which names --https may order a certificate
// for: only published ones, and no more than the rate limit allows.
func TestACMEDecision(t *testing.T) {
	published := map[string]bool{"app.example.org": true}
	a := &autoCerts{name: "tunnel.example.org", log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		limit: newOrderLimit(2, time.Hour), failed: map[string]string{}}
	if err := a.decide(t.Context(), "app.example.org"); err == nil {
		t.Fatal("a name was allowed before coordinator said what is published")
	}
	a.setPublished(func(host string) bool { return published[host] })
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"app.example.org", true},
		{"nobody.example.org", false},
		{"random.example.net", false},
		{"app.example.org", true},
		{"app.example.org", false}, // the third order within the hour
	} {
		if err := a.decide(t.Context(), tc.name); (err == nil) != tc.ok {
			t.Errorf("decide(%s) = %v, want allowed %v", tc.name, err, tc.ok)
		}
	}
}

// TestOrderLimit checks the token bucket: a burst, then one per interval.
func TestOrderLimit(t *testing.T) {
	l := newOrderLimit(2, time.Minute)
	now := time.Unix(1_000_000, 0)
	for i, tc := range []struct {
		after time.Duration
		ok    bool
	}{
		{0, true}, {0, true}, {0, false},
		{30 * time.Second, false}, {30 * time.Second, true}, {0, false},
		{time.Hour, true}, {0, true}, {0, false},
	} {
		now = now.Add(tc.after)
		if got := l.allow(now); got != tc.ok {
			t.Errorf("step %d: allow = %v, want %v", i, got, tc.ok)
		}
	}
}
