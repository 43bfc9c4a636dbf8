package quictun

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDrainGate(t *testing.T) {
	var g drainGate
	if err := g.wait(t.Context()); err != nil {
		t.Fatalf("wait with nothing in progress: %v", err)
	}
	if !g.begin() || !g.begin() {
		t.Fatal("an open gate refused a session")
	}
	g.stop()
	if g.begin() {
		t.Fatal("a stopped gate let a session in")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := g.wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with two sessions open = %v, want the context's end", err)
	}
	done := make(chan error, 1)
	go func() { done <- g.wait(t.Context()) }()
	g.end()
	g.end()
	if err := <-done; err != nil {
		t.Fatalf("wait after the last session ended = %v", err)
	}
}
