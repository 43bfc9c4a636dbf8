package quictun

import (
	"context"
	"fmt"
	"sync"
)

// drainGate counts the sessions in progress so that a drain can wait for
// them; once stopped it lets no new session in. The zero value is open.
type drainGate struct {
	mu      sync.Mutex
	stopped bool
	live    int
	drained chan struct{} // closed when live drops to 0 after stop
}

// begin counts a session in; it reports false once the gate is stopped.
func (g *drainGate) begin() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.live++
	return true
}

// end counts a session out.
func (g *drainGate) end() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.live--
	if g.live == 0 && g.drained != nil {
		close(g.drained)
		g.drained = nil
	}
}

// stop lets no new session in.
func (g *drainGate) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
}

// isStopped reports whether stop was called.
func (g *drainGate) isStopped() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stopped
}

// wait returns nil once no session is left, or ctx's cause (with how many
// are still open) when ctx ends first. Call it after stop.
func (g *drainGate) wait(ctx context.Context) error {
	g.mu.Lock()
	if g.live == 0 {
		g.mu.Unlock()
		return nil
	}
	if g.drained == nil {
		g.drained = make(chan struct{})
	}
	done, n := g.drained, g.live
	g.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d sessions still open: %w", n, context.Cause(ctx))
	}
}
