package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// soakSessionsEnv overrides how many sessions TestSoak opens (default
// 50,000).
const soakSessionsEnv = "QUICTUNNEL_SOAK_SESSIONS"

// soakBound is the most TestSoak may spend opening and closing sessions.
const soakBound = 2 * time.Minute

// pingTarget accepts connections on 127.0.0.1, reads one byte, answers one
// byte and closes first (so TIME_WAIT stays on its side, not on the
// ephemeral ports the soak uses).
func pingTarget(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err == nil {
					c.Write([]byte{b[0] + 1})
				}
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// soakSession opens one tunnel session through localproxy to target,
// exchanges a byte, waits for the target's close to come through and
// closes.
func soakSession(ctx context.Context, proxyAddr, target string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, br, err := connectTunnel(ctx, proxyAddr, target)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte{'p'}); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	b, err := br.ReadByte()
	if err != nil || b != 'q' {
		return fmt.Errorf("answer %q: %w", b, err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return fmt.Errorf("after the answer: %v, want EOF (the target closed)", err)
	}
	return nil
}

// level is a service's goroutine and open-file counts.
type level struct{ goroutines, fds float64 }

func readLevel(port int) (level, error) {
	g, err := metric(port, "go_goroutines")
	if err != nil {
		return level{}, err
	}
	f, err := metric(port, "process_open_fds")
	return level{g, f}, err
}

// TestSoak opens and closes 50,000 sessions (QUICTUNNEL_SOAK_SESSIONS
// overrides) through the real binaries, from 16 concurrent clients, in at
// most two minutes, and checks that localproxy's and coordinator's
// goroutines and open files come back to where they were after warm-up.
func TestSoak(t *testing.T) {
	sessions := 50000
	if s := os.Getenv(soakSessionsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive count", soakSessionsEnv, s)
		}
		sessions = n
	}
	const workers = 16
	target := pingTarget(t)
	b := startBinLab(t, binLabOptions{})
	proxyAddr := loop(b.proxyPort)
	services := []struct {
		name string
		port int
	}{{"localproxy", b.proxyMetrics}, {"coordinator", b.coordMetrics}}

	// Warm-up: the dial-back connection and pools exist from here on.
	for range 100 {
		if err := soakSession(t.Context(), proxyAddr, target); err != nil {
			t.Fatalf("warm-up session: %v", err)
		}
	}
	base := make(map[string]level)
	for _, s := range services {
		l, err := readLevel(s.port)
		if err != nil {
			t.Fatalf("%s metrics: %v", s.name, err)
		}
		base[s.name] = l
	}

	ctx, cancel := context.WithTimeout(t.Context(), soakBound)
	defer cancel()
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var peak sync.Map // service name -> level, sampled during the run
	var wg sync.WaitGroup
	begin := time.Now()
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(sessions) && ctx.Err() == nil {
				if err := soakSession(ctx, proxyAddr, target); err != nil && ctx.Err() == nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	sampler := make(chan struct{})
	var samplerDone sync.WaitGroup
	samplerDone.Go(func() {
		for {
			select {
			case <-sampler:
				return
			case <-time.After(time.Second):
			}
			for _, s := range services {
				l, err := readLevel(s.port)
				if err != nil {
					continue
				}
				if old, loaded := peak.LoadOrStore(s.name, l); loaded {
					o := old.(level)
					peak.Store(s.name, level{max(l.goroutines, o.goroutines), max(l.fds, o.fds)})
				}
			}
		}
	})
	wg.Wait()
	close(sampler)
	samplerDone.Wait()
	took := time.Since(begin)
	done := min(next.Load()-workers, int64(sessions))
	if ctx.Err() != nil {
		t.Fatalf("only %d of %d sessions in %v", done, sessions, soakBound)
	}
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d sessions failed; first: %v", f, sessions, firstErr.Load())
	}
	t.Logf("%d sessions opened and closed in %v (%.0f/s) by %d clients", sessions, took.Round(time.Millisecond),
		float64(sessions)/took.Seconds(), workers)

	// Back to the starting level: a few goroutines of slack for timers
	// and the metrics scrape itself; not one file more.
	for _, s := range services {
		var now level
		waitUntil(t, 30*time.Second, s.name+"'s goroutines and open files back at their starting level", func() bool {
			l, err := readLevel(s.port)
			now = l
			return err == nil && l.goroutines <= base[s.name].goroutines+3 && l.fds <= base[s.name].fds
		})
		var p level
		if v, ok := peak.Load(s.name); ok {
			p = v.(level)
		}
		t.Logf("%s: goroutines %v at start, %v peak, %v after; open files %v at start, %v peak, %v after", s.name,
			base[s.name].goroutines, p.goroutines, now.goroutines, base[s.name].fds, p.fds, now.fds)
	}
}
