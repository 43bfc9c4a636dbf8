package quictun

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestLimitHitsLogOnce: hits are all counted, but one warning stands for
// a burst of them.
func TestLimitHitsLogOnce(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var l limitHits
	for range 5 {
		l.hit(log, LimitClients, "client refused")
	}
	l.hit(log, LimitSessionsPerClient, "session refused")
	if got := strings.Count(buf.String(), "client refused"); got != 1 {
		t.Errorf("logged %d warnings for 5 hits in a burst, want 1:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "limit="+LimitSessionsPerClient) {
		t.Errorf("a second limit's hit was not logged:\n%s", buf.String())
	}
	if got := l.snapshot(); got[LimitClients] != 5 || got[LimitSessionsPerClient] != 1 {
		t.Errorf("hits = %v, want 5 and 1", got)
	}
}

// TestMaxSessionsPerClient: an Open beyond the limit gets CodeLimit with
// a reason naming the limit; a session ending frees a place.
func TestMaxSessionsPerClient(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.MaxSessionsPerClient = 2 }})
	target := echoServer(t, "127.0.0.1")
	var open []net.Conn
	for range 2 {
		conn, err := h.client.Dial(t.Context(), target)
		if err != nil {
			t.Fatalf("Dial within the limit: %v", err)
		}
		open = append(open, conn)
	}
	_, err := h.client.Dial(t.Context(), target)
	var se *SessionError
	if !errors.As(err, &se) || se.Code != CodeLimit || !strings.Contains(se.Reason, "max-sessions-per-client") {
		t.Fatalf("Dial over the limit = %v, want CodeLimit naming max-sessions-per-client", err)
	}
	if got := h.server.Stats().LimitHits[LimitSessionsPerClient]; got != 1 {
		t.Errorf("LimitHits[%s] = %d, want 1", LimitSessionsPerClient, got)
	}
	// Dial returns once localproxy has the dial-back stream, a moment
	// before coordinator counts the session active (it waits for the
	// ack): wait for both to be counted, then for one to end.
	waitFor(t, "both sessions to be active", func() bool { return h.server.Stats().ActiveSessions == 2 })
	open[0].Close()
	waitFor(t, "the closed session to end", func() bool { return h.server.Stats().ActiveSessions == 1 })
	echoRoundTrip(t, h.client, target, []byte("a place was freed"))
	open[1].Close()
}

// TestOpenStreamsEnd: an Open stream ends on both sides once its session
// went over dial-back (localproxy and coordinator each FIN it and take the
// other's FIN), so it stops counting against coordinator's stream limit:
// many more sessions than the limit allows at once pass one after another.
func TestOpenStreamsEnd(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.MaxStreams = 3 }}) // the control stream and two Opens
	target := echoServer(t, "127.0.0.1")
	for i := range 12 {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		err := echoOnce(ctx, h.client, target, []byte("session "+strconv.Itoa(i)))
		cancel()
		if err != nil {
			t.Fatalf("session %d (stream limit 3): %v", i, err)
		}
	}
	if st := h.client.Stats(); st.RelaySessions != 0 {
		t.Errorf("%d sessions went over the relay, want all over dial-back", st.RelaySessions)
	}
}

// TestMaxClients: a client beyond the limit is refused with CodeLimit and
// a reason naming the limit; the connected one keeps working.
func TestMaxClients(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.MaxClients = 1 }})
	target := echoServer(t, "127.0.0.1")
	echoRoundTrip(t, h.client, target, []byte("first client"))

	c2, err := NewClient(ClientConfig{
		Transport: newTransport(t, "127.0.0.1"), Coordinator: h.serverTr.Conn.LocalAddr().String(), Token: "secret",
		RootCAs: getPKI(t).pool, ServerName: "localhost", ConnectTimeout: time.Second,
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { c2.Run(ctx) })
	_, err = c2.Dial(t.Context(), target)
	var ae *quic.ApplicationError
	if !errors.Is(err, ErrCoordinatorUnavailable) || !errors.As(err, &ae) || ErrorCode(ae.ErrorCode) != CodeLimit ||
		!strings.Contains(ae.ErrorMessage, "max-clients") {
		t.Fatalf("second client's Dial = %v, want coordinator unavailable, closed with CodeLimit naming max-clients", err)
	}
	if st := h.server.Stats(); st.Clients != 1 || st.LimitHits[LimitClients] < 1 {
		t.Errorf("server %+v: want 1 client and a hit of the clients limit", st)
	}
	echoRoundTrip(t, h.client, target, []byte("first client still served"))
}

// TestMaxPendingSessions: a Dial while MaxPendingSessions sessions wait
// for their dial-back fails with ErrTooManySessions and is counted.
func TestMaxPendingSessions(t *testing.T) {
	release := make(chan struct{})
	var d net.Dialer
	h := newHarness(t, harnessOpts{
		serverMod: func(c *ServerConfig) {
			c.DialTarget = func(ctx context.Context, network, addr string) (net.Conn, error) {
				select {
				case <-release:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				return d.DialContext(ctx, network, addr)
			}
		},
		clientMod: func(c *ClientConfig) { c.MaxPendingSessions = 1 },
	})
	target := echoServer(t, "127.0.0.1")
	first := make(chan error, 1)
	go func() {
		conn, err := h.client.Dial(t.Context(), target)
		if err == nil {
			conn.Close()
		}
		first <- err
	}()
	waitFor(t, "the first session to be pending", func() bool { return h.client.Stats().PendingSessions == 1 })
	_, err := h.client.Dial(t.Context(), target)
	if !errors.Is(err, ErrTooManySessions) || !strings.Contains(err.Error(), "max-pending-sessions") {
		t.Fatalf("Dial while the table is full = %v, want ErrTooManySessions naming max-pending-sessions", err)
	}
	if got := h.client.Stats().LimitHits[LimitPendingSessions]; got != 1 {
		t.Errorf("LimitHits[%s] = %d, want 1", LimitPendingSessions, got)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first session: %v", err)
	}
}
