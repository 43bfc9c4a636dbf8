package quictun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"
)

// startWorker runs a dial-back worker against h's server on its own socket.
func startWorker(t *testing.T, h *harness, token string) *Worker {
	t.Helper()
	w, err := NewWorker(WorkerConfig{
		Transport: newTransport(t, "127.0.0.1"), Coordinator: h.serverTr.Conn.LocalAddr().String(), Token: token,
		Certificate: getPKI(t).cert, RootCAs: getPKI(t).pool, ServerName: "localhost",
		RelayAfter: 500 * time.Millisecond, ConnectTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func echoRoundTrip(t *testing.T, c *Client, target string, msg []byte) {
	t.Helper()
	if err := echoOnce(t.Context(), c, target, msg); err != nil {
		t.Fatal(err)
	}
}

// echoOnce sends msg through a new session to an echo target and checks
// it comes back; safe to call from any goroutine.
func echoOnce(ctx context.Context, c *Client, target string, msg []byte) error {
	conn, err := c.Dial(ctx, target)
	if err != nil {
		return fmt.Errorf("Dial: %w", err)
	}
	defer conn.Close()
	go func() { conn.Write(msg); conn.CloseWrite() }()
	got, err := io.ReadAll(conn)
	if err != nil || !bytes.Equal(got, msg) {
		return fmt.Errorf("echo: got %d bytes (%v), want %d", len(got), err, len(msg))
	}
	return nil
}

// TestDialBackViaWorker: with a dial-back worker connected, the worker
// dials the target and dials back after the client punched towards it; the
// data does not pass through coordinator. When the worker cannot reach the
// client, the session is relayed through coordinator to the worker.
func TestDialBackViaWorker(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		name := map[bool]string{false: "dial-back", true: "relay"}[refuse]
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{refuseDialBacks: refuse, serverMod: func(c *ServerConfig) { c.WorkerToken = "worker-secret" }})
			w := startWorker(t, h, "worker-secret")
			waitFor(t, "the worker to connect", func() bool { return h.server.Stats().Workers == 1 })
			target := echoServer(t, "127.0.0.1")
			msg := bytes.Repeat([]byte("via worker "), 20000)
			for i := range 3 {
				start := time.Now()
				echoRoundTrip(t, h.client, target, msg)
				t.Logf("session %d: %v", i, time.Since(start))
			}
			ws, ss, cs := w.Stats(), h.server.Stats(), h.client.Stats()
			if ws.Jobs != 3 || ss.Sessions != 3 {
				t.Fatalf("worker %+v server %+v: want 3 jobs and 3 sessions", ws, ss)
			}
			if cs.Punches != 1 || ws.Punches < 1 {
				t.Errorf("client punched %d times, worker saw %d punches: want one punch, for the first session only", cs.Punches, ws.Punches)
			}
			if refuse {
				if ws.RelaySessions != 3 || ss.RelaySessions != 3 || cs.RelaySessions != 3 {
					t.Errorf("worker %+v server %+v client %+v: want 3 relayed sessions", ws, ss, cs)
				}
				return
			}
			if ws.DialBackSessions != 3 || ss.DialBackSessions != 3 || ss.BytesUp != 0 {
				t.Errorf("worker %+v server %+v: want 3 dial-back sessions carried by the worker alone", ws, ss)
			}
			if ws.BytesUp != 3*int64(len(msg)) || ws.BytesDown != 3*int64(len(msg)) {
				t.Errorf("worker moved %d/%d bytes, want %d each way", ws.BytesUp, ws.BytesDown, 3*len(msg))
			}
		})
	}
}

func TestWorkerBadToken(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.WorkerToken = "worker-secret" }})
	w, err := NewWorker(WorkerConfig{
		Transport: newTransport(t, "127.0.0.1"), Coordinator: h.serverTr.Conn.LocalAddr().String(), Token: "wrong",
		Certificate: getPKI(t).cert, RootCAs: getPKI(t).pool, ServerName: "localhost",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Run(t.Context()); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("Run with a wrong token = %v, want ErrAuthFailed", err)
	}
	if h.server.Stats().Workers != 0 {
		t.Fatal("worker with a wrong token joined")
	}
	// Without workers sessions are served by coordinator itself.
	echoRoundTrip(t, h.client, echoServer(t, "127.0.0.1"), []byte("direct"))
}

// TestWorkerDrain: a draining worker takes no new sessions (coordinator
// serves them itself), lets its live session finish, and Drain returns
// once it has.
func TestWorkerDrain(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.WorkerToken = "worker-secret" }})
	w := startWorker(t, h, "worker-secret")
	waitFor(t, "the worker to connect", func() bool { return h.server.Stats().Workers == 1 })
	target := echoServer(t, "127.0.0.1")
	live, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echoOnce := func(msg string) {
		t.Helper()
		if _, err := live.Write([]byte(msg)); err != nil {
			t.Fatalf("write on the live session: %v", err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(live, got); err != nil || string(got) != msg {
			t.Fatalf("echo on the live session: %q, %v", got, err)
		}
	}
	echoOnce("before drain")
	if ws := w.Stats(); ws.Jobs != 1 || ws.ActiveSessions != 1 {
		t.Fatalf("worker %+v: want the session on the worker", ws)
	}

	drained := make(chan error, 1)
	go func() { drained <- w.Drain(t.Context()) }()
	waitFor(t, "coordinator to see the worker draining", func() bool { return h.server.Stats().WorkersDraining == 1 })
	echoRoundTrip(t, h.client, target, []byte("served by coordinator"))
	if ws, ss := w.Stats(), h.server.Stats(); ws.Jobs != 1 || ss.DialBackDials == 0 {
		t.Fatalf("worker %+v server %+v: want the new session served by coordinator itself", ws, ss)
	}
	echoOnce("during drain")
	select {
	case err := <-drained:
		t.Fatalf("Drain returned %v with a session still open", err)
	default:
	}
	live.Close()
	if err := <-drained; err != nil {
		t.Fatalf("Drain: %v", err)
	}
}

// TestDrainingWorkerRefusesJobs: a job reaching a worker that is draining
// (before coordinator learnt it) is refused, and coordinator serves the
// session itself.
func TestDrainingWorkerRefusesJobs(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.WorkerToken = "worker-secret" }})
	w := startWorker(t, h, "worker-secret")
	waitFor(t, "the worker to connect", func() bool { return h.server.Stats().Workers == 1 })
	w.sessions.stop() // without telling coordinator
	echoRoundTrip(t, h.client, echoServer(t, "127.0.0.1"), []byte("refused by the worker"))
	if ws, ss := w.Stats(), h.server.Stats(); ws.Jobs != 0 || ss.Sessions != 1 || ss.DialBackDials != 1 {
		t.Fatalf("worker %+v server %+v: want the session served by coordinator itself", ws, ss)
	}
}

// TestWorkerConcurrentSessions: many sessions of one client at once share
// one dial-back connection, dialed (and punched for) once.
func TestWorkerConcurrentSessions(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.WorkerToken = "worker-secret" }})
	w := startWorker(t, h, "worker-secret")
	waitFor(t, "the worker to connect", func() bool { return h.server.Stats().Workers == 1 })
	target := echoServer(t, "127.0.0.1")
	echoRoundTrip(t, h.client, target, []byte("first")) // dials and punches
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if err := echoOnce(t.Context(), h.client, target, fmt.Appendf(nil, "session %d", i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ws, cs := w.Stats(), h.client.Stats(); ws.DialBackSessions != 21 || cs.Punches != 1 {
		t.Errorf("worker %+v, client punched %d times: want 21 dial-back sessions and one punch", ws, cs.Punches)
	}
}

// TestWorkerSessionsResetAtOnce is TestSessionsResetAtOnceKeepTheDialBack
// with a dial-back worker: abandoned sessions cost the worker's dial-back
// connection nothing.
func TestWorkerSessionsResetAtOnce(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.WorkerToken = "worker-secret" }})
	w := startWorker(t, h, "worker-secret")
	waitFor(t, "the worker to connect", func() bool { return h.server.Stats().Workers == 1 })
	target := echoServer(t, "127.0.0.1")
	echoRoundTrip(t, h.client, target, []byte("first")) // the dial-back connection is up
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if conn, err := h.client.Dial(t.Context(), target); err == nil {
				conn.Reset()
				conn.Close()
			}
		})
	}
	wg.Wait()
	echoRoundTrip(t, h.client, target, []byte("after"))
	if ws := w.Stats(); ws.DialBackErrors != 0 || ws.RelaySessions != 0 {
		t.Errorf("worker stats %+v: want no dial-back error, no session relayed", ws)
	}
}
