package quictun

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// syncBuffer is a bytes.Buffer safe for concurrent log writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// controlTLS is what a client of the server under test presents.
func controlTLS(t testing.TB) *tls.Config {
	return &tls.Config{RootCAs: getPKI(t).pool, ServerName: "localhost", NextProtos: []string{ALPNControl}, MinVersion: tls.VersionTLS13}
}

// helloWith connects over tr, says Hello with token and waits for the
// server to close the connection; it returns the close error.
func helloWith(ctx context.Context, tr *quic.Transport, addr net.Addr, tlsConf *tls.Config, token string) error {
	// 10 s: a handshake can take seconds on a busy CPU.
	conn, err := tr.Dial(ctx, addr, tlsConf, QUICConfig(10, 10*time.Second))
	if err != nil {
		return err
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStream()
	if err != nil {
		return err
	}
	if err := WriteFrame(s, &Hello{Version: ProtocolVersion, Token: token}); err != nil {
		return err
	}
	select {
	case <-conn.Context().Done():
		return context.Cause(conn.Context())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestAuthFailureLog: 300 handshakes with a bad token from one source
// make one full log line, then summary lines whose counts add up to the
// rest, and the counter by reason says 1000.
func TestAuthFailureLog(t *testing.T) {
	var logs syncBuffer
	h := &harness{serverTr: newTransport(t, "127.0.0.1")}
	h.startServer(t, harnessOpts{serverToken: "secret", serverMod: func(c *ServerConfig) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	}})
	// A period long enough that a busy CPU's pause between two failures
	// does not end the source's run (its next failure would be logged in
	// full), short enough for summary lines within the test.
	h.server.auth.every = 2 * time.Second
	t.Cleanup(h.stopServer)
	tr := newTransport(t, "127.0.0.1") // one source address, one port
	addr := h.serverTr.Conn.LocalAddr()
	const n, workers = 300, 16 // e2e TestBadTokenFlood sends 1000 at the binary
	jobs := make(chan int)
	var wg sync.WaitGroup
	var refused, other sync.Map
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				err := helloWith(t.Context(), tr, addr, controlTLS(t), "wrong")
				var ae *quic.ApplicationError
				if errors.As(err, &ae) && ErrorCode(ae.ErrorCode) == CodeUnauthorized {
					refused.Store(i, true)
				} else {
					other.Store(i, err)
				}
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	other.Range(func(k, v any) bool { t.Errorf("handshake %v: %v, want refused as unauthorized", k, v); return false })
	h.stopServer() // logs what is held back

	st := h.server.Stats()
	if st.AuthFailures != n || st.AuthFailuresByReason[AuthInvalidToken] != n {
		t.Errorf("AuthFailures %d, by reason %v; want %d invalid tokens", st.AuthFailures, st.AuthFailuresByReason, n)
	}
	out := logs.String()
	if got := strings.Count(out, "client refused"); got != 1 {
		t.Errorf("%d lines about refused clients, want 1", got)
	}
	summaries := regexp.MustCompile(`more failed authentications" source=127\.0\.0\.1 invalid_token=(\d+) failures=(\d+)`).FindAllStringSubmatch(out, -1)
	var summed int
	for _, m := range summaries {
		k, _ := strconv.Atoi(m[2])
		summed += k
	}
	if summed != n-1 {
		t.Errorf("summary lines count %d failures, want %d", summed, n-1)
	}
	if lines := strings.Count(out, "\n"); lines > 50 {
		t.Errorf("%d log lines for %d failures", lines, n)
	}
	t.Logf("%d failures: %d summary lines", n, len(summaries))
	if t.Failed() {
		t.Logf("log:\n%s", out)
	}
}

// TestHandshakeLimits: connections that never say Hello are bounded per
// source and in all; past RetryAbove new ones answer a Retry; a stream
// opened before Welcome closes the connection at once; and an
// authenticated client is not counted.
func TestHandshakeLimits(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) {
		c.Handshakes = HandshakeLimits{RetryAbove: 1, Max: 4, MaxPerSource: 3}
		c.HelloTimeout = 5 * time.Second
	}})
	waitConnected(t, h.client)
	addr := h.serverTr.Conn.LocalAddr()
	ctx := t.Context()
	dial := func(host string) (*quic.Conn, error) {
		return newTransport(t, host).Dial(ctx, addr, controlTLS(t), QUICConfig(10, 2*time.Second))
	}
	var silent []*quic.Conn
	defer func() {
		for _, c := range silent {
			c.CloseWithError(0, "")
		}
	}()
	for i := range 3 {
		c, err := dial("127.0.0.1")
		if err != nil {
			t.Fatalf("silent connection %d from 127.0.0.1: %v", i, err)
		}
		silent = append(silent, c)
	}
	refusedErr := func(err error) bool {
		var te *quic.TransportError
		return errors.As(err, &te) && te.ErrorCode == quic.ConnectionRefused
	}
	if _, err := dial("127.0.0.1"); !refusedErr(err) {
		t.Errorf("a 4th silent connection from 127.0.0.1: %v, want refused", err)
	}
	c, err := dial("127.0.0.2")
	if err != nil {
		t.Fatalf("a silent connection from 127.0.0.2: %v", err)
	}
	silent = append(silent, c)
	if _, err := dial("127.0.0.3"); !refusedErr(err) {
		t.Errorf("a 5th silent connection: %v, want refused", err)
	}
	st := h.server.Stats()
	// (A refused client sends its Initial again: a refusal may count twice.)
	if st.Handshakes != 4 || st.HandshakeRetries == 0 || st.LimitHits[LimitHandshakes] == 0 || st.LimitHits[LimitHandshakesPerSource] == 0 {
		t.Errorf("Handshakes %d, retries %d, limit hits %v; want 4 pending, retries, hits of each limit",
			st.Handshakes, st.HandshakeRetries, st.LimitHits)
	}

	// A connection that opens a second stream before Welcome is closed
	// at once, which frees its place.
	early := silent[3]
	for range 2 {
		s, err := early.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		s.Write([]byte("x"))
	}
	select {
	case <-early.Context().Done():
		var ae *quic.ApplicationError
		if err := context.Cause(early.Context()); !errors.As(err, &ae) || ErrorCode(ae.ErrorCode) != CodeProtocol {
			t.Errorf("closed with %v, want CodeProtocol", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a connection with a stream before Welcome was not closed")
	}
	waitFor(t, "the early stream's place to be freed", func() bool { return h.server.Stats().Handshakes == 3 })
	if got := h.server.Stats().AuthFailuresByReason[AuthBadHello]; got != 1 {
		t.Errorf("bad_hello failures %d, want 1", got)
	}
	// The client connected before all this still works.
	target := echoServer(t, "127.0.0.1")
	conn, err := h.client.Dial(ctx, target)
	if err != nil {
		t.Fatalf("Dial while the silent connections wait: %v", err)
	}
	conn.Close()
}

func waitConnected(t *testing.T, c *Client) {
	t.Helper()
	waitFor(t, "client connected", func() bool { return c.Stats().Connected })
}

// TestAuthLogBoundsSources: past maxAuthLogSources addresses, failures
// are summed up under "other sources", and close logs what is held back.
func TestAuthLogBoundsSources(t *testing.T) {
	var logs syncBuffer
	a := newAuthLog(slog.New(slog.NewTextHandler(&logs, nil)), time.Hour)
	const extra = 100
	for i := range maxAuthLogSources + extra {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		a.fail(src, AuthInvalidToken, "client refused")
		a.fail(src, AuthNoHello, "client refused")
	}
	if got := len(a.sources); got > maxAuthLogSources+1 {
		t.Errorf("%d sources remembered, want at most %d", got, maxAuthLogSources+1)
	}
	a.close()
	out := logs.String()
	if got := strings.Count(out, "client refused"); got != maxAuthLogSources+1 {
		t.Errorf("%d full lines, want one per remembered source and one for the others: %d", got, maxAuthLogSources+1)
	}
	// Each remembered source held back its second failure; the others
	// all but the first of theirs.
	if got := strings.Count(out, "more failed authentications"); got != maxAuthLogSources+1 {
		t.Errorf("%d summary lines, want %d", got, maxAuthLogSources+1)
	}
	if want := fmt.Sprintf(`source="other sources" invalid_token=%d no_hello=%d failures=%d`, extra-1, extra, 2*extra-1); !strings.Contains(out, want) {
		t.Errorf("no summary %q", want)
	}
	if byReason, n := a.counts(); n != 2*(maxAuthLogSources+extra) || byReason[AuthNoHello] != maxAuthLogSources+extra {
		t.Errorf("counts %v (%d)", byReason, n)
	}
}
