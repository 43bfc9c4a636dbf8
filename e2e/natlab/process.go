package natlab

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stopGrace is how long Stop waits after SIGTERM before SIGKILL, and how
// long it then waits for the output pipes to close.
const stopGrace = 3 * time.Second

// maxOutput bounds the output a Process keeps; older output is dropped.
const maxOutput = 1 << 20

// Process is a program running in the background inside a lab namespace.
type Process struct {
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{}
	err  error // Wait's result, set before done is closed

	stopOnce sync.Once
}

// Start runs name inside h's namespace in the background, in its own
// process group, with standard output and error captured (the last 1 MiB is
// kept). It fails t if the program cannot start. The process group is
// stopped (SIGTERM, then SIGKILL after 3 s) and reaped in t's cleanup.
func (h *Host) Start(t testing.TB, name string, args ...string) *Process {
	t.Helper()
	if h.lab.isRemoved(h.NS) {
		t.Fatalf("natlab: start %s in %s: %v", name, h.Name, ErrHostRemoved)
	}
	// Not CommandContext: the process outlives this call and is stopped by
	// Stop (or cleanup), which also signals its children.
	cmd := exec.Command(h.lab.tools.ip, append([]string{"netns", "exec", h.NS, name}, args...)...)
	p := &Process{cmd: cmd, out: &tailBuffer{max: maxOutput}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = stopGrace
	if err := cmd.Start(); err != nil {
		t.Fatalf("natlab: start %s in %s: %v", name, h.Name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { _ = p.Stop() })
	return p
}

// Pid is the process id (`ip netns exec` replaces itself with the program,
// so it is the program's).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Output returns what the process wrote to standard output and error so far.
func (p *Process) Output() string { return p.out.String() }

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit on its own and returns its exit
// status (nil for status 0), or ctx's error.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("wait for %s: %w", p.cmd.Args[4], context.Cause(ctx))
	}
}

// Stop ends the process group: SIGTERM, then SIGKILL if it has not exited
// after 3 s; then it reaps the process. It returns the exit status unless
// the process died of the signal Stop sent (then nil). Stop is idempotent.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		t := time.NewTimer(stopGrace)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done // bounded: SIGKILL, then WaitDelay for the pipes
		}
		// No signal after the reap: the id may be reused by then. Children
		// that outlive the leader die with their namespace.
	})
	<-p.done
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() &&
			(ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGKILL) {
			return nil
		}
	}
	return p.err
}

// tailBuffer is a concurrency-safe buffer that keeps the last max bytes.
type tailBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	if over := len(b.b) - b.max; over > 0 {
		b.b = append(b.b[:0], b.b[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}
