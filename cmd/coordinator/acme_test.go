package main

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
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

// TestACMEFailureLoggedOnce: certmagic retries a failed order with
// backoff; the log says why once per name and reason, not at every try.
func TestACMEFailureLoggedOnce(t *testing.T) {
	var out strings.Builder
	a := &autoCerts{name: "tunnel.example.org", log: slog.New(slog.NewTextHandler(&out, nil)), failed: map[string]string{}}
	fail := func(name string, err error) {
		a.event(t.Context(), "cert_failed", map[string]any{"identifier": name, "renewal": true, "error": err})
	}
	unreachable := errors.New("dial tcp: connection refused")
	fail("tunnel.example.org", unreachable)
	fail("tunnel.example.org", unreachable)
	fail("tunnel.example.org", unreachable)
	fail("app.example.org", unreachable)
	fail("tunnel.example.org", acme.Problem{Type: "urn:ietf:params:acme:error:rateLimited", Detail: "too many certificates"})
	a.event(t.Context(), "cert_obtained", map[string]any{"identifier": "tunnel.example.org", "renewal": true})
	fail("tunnel.example.org", unreachable)
	got := strings.Count(out.String(), "level=ERROR")
	if got != 4 {
		t.Errorf("%d errors logged, want 4 (one per name and reason, again after a success):\n%s", got, out.String())
	}
	if !strings.Contains(out.String(), "too many certificates") {
		t.Errorf("the CA's reason is not logged:\n%s", out.String())
	}
}
