package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// bodyApp is an app that reads every request body whole before it
// answers, and counts its open connections. Call cut when the proxies are
// started: the end of the test then cuts the app's connections before it
// closes the proxies (a proxy that never let go of a request would
// otherwise keep its Close waiting).
func bodyApp(t *testing.T) (addr string, open *atomic.Int64, cut func()) {
	t.Helper()
	open = new(atomic.Int64)
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return // the connection is closed
		}
		fmt.Fprintf(w, "read %d", n)
	}))
	app.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	app.Start()
	t.Cleanup(app.Close)
	return app.Listener.Addr().String(), open, func() { t.Cleanup(app.CloseClientConnections) }
}

// oneBackend reaches one TCP address.
type oneBackend struct{ addr string }

func (b oneBackend) Name() string { return "app" }

func (b oneBackend) Dial(ctx context.Context, _ netip.AddrPort) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, "tcp", b.addr)
}

func (b oneBackend) Route(string) (Backend, error) { return b, nil }

// edgeProxy is a forward or a reverse proxy under test: its address,
// counters and how a request line for path on the app is written.
type edgeProxy struct {
	addr  string
	stats func() Stats
	line  func(method, path string) string
}

// startEdgeProxies starts a forward proxy and a reverse proxy to app, both
// with cfg's timeouts and access log.
func startEdgeProxies(t *testing.T, app string, cfg Config) map[string]edgeProxy {
	t.Helper()
	fwd, fwdAddr := startProxy(t, cfg)
	rev, err := NewReverse(ReverseConfig{Router: oneBackend{app}, AccessLog: cfg.AccessLog, ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		BodyReadTimeout: cfg.BodyReadTimeout})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rev.Serve(ln) }()
	t.Cleanup(func() {
		rev.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return map[string]edgeProxy{
		"forward": {fwdAddr, fwd.Stats, func(m, p string) string { return m + " http://" + app + p + " HTTP/1.1\r\nHost: " + app + "\r\n" }},
		"reverse": {ln.Addr().String(), rev.Stats, func(m, p string) string { return m + " " + p + " HTTP/1.1\r\nHost: app.example\r\n" }},
	}
}

// TestAbortedRequestBodies sends requests whose bodies stop arriving, are
// cut or are malformed: each is answered 408 or 400 where the client can
// still read it, logged with its outcome, and frees the client connection
// and the app's within the body timeout; a normal request then works.
func TestAbortedRequestBodies(t *testing.T) {
	const timeout = 200 * time.Millisecond
	tests := []struct {
		name   string
		head   string // after the request line and Host
		body   string
		quiet  bool // keep the connection open and read the answer; else close at once
		status int
		reason string // in the answer and the access log
	}{
		{"length, then close", "Content-Length: 100000\r\n", "abc", false, 400, "body ended after 3 of 100000 bytes"},
		{"length, then quiet", "Content-Length: 100000\r\n", "abc", true, 408, "stopped arriving"},
		{"chunked, then quiet", "Transfer-Encoding: chunked\r\n", "5\r\nhel", true, 408, "stopped arriving"},
		{"chunked, then close", "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n", false, 400, "chunk size"},
		{"bad chunk size", "Transfer-Encoding: chunked\r\n", "5\r\nhello\r\nzz\r\n", true, 400, "bad chunk size"},
	}
	app, open, cut := bodyApp(t)
	var log syncBuffer
	proxies := startEdgeProxies(t, app, Config{BodyReadTimeout: timeout, AccessLog: slog.New(slog.NewTextHandler(&log, nil))})
	cut()
	for name, p := range proxies {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				c, err := net.Dial("tcp", p.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				io.WriteString(c, p.line("POST", "/upload")+tt.head+"\r\n"+tt.body)
				begin := time.Now()
				if tt.quiet {
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					resp, err := http.ReadResponse(bufio.NewReader(c), nil)
					if err != nil {
						t.Fatalf("no answer: %v", err)
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.reason) || !resp.Close {
						t.Fatalf("answered %d %q (close %v), want %d saying %q and closing", resp.StatusCode, b, resp.Close, tt.status, tt.reason)
					}
				} else {
					c.Close()
				}
				waitUntil(t, "the client and app connections to close", func() bool { return p.stats().ActiveConns == 0 && open.Load() == 0 })
				if took := time.Since(begin); took > timeout+2*time.Second {
					t.Errorf("freed after %v; the body timeout is %v", took, timeout)
				}
				line := fmt.Sprintf("status=%d", tt.status)
				waitUntil(t, "the access-log line", func() bool { return strings.Contains(log.String(), line) })
				if got := log.String(); !strings.Contains(got, tt.reason) || !strings.Contains(got, "outcome=") {
					t.Errorf("access log lacks %q:\n%s", tt.reason, got)
				}
				log.Reset()
			})
		}
		t.Run(name+"/then a normal request", func(t *testing.T) {
			resp, body := rawExchange(t, p.addr, p.line("POST", "/ok")+"Content-Length: 5\r\n\r\nhello")
			if resp.StatusCode != 200 || body != "read 5" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestMalformedRequestsAnsweredAtOnce checks the HTTP/1.1 rules at the
// edge (RFC 9112): a request line that cannot be one (HTTP/0.9, binary),
// two Host fields and a Transfer-Encoding other than chunked alone are
// answered 400 at once, on both proxies, and reach no app.
func TestMalformedRequestsAnsweredAtOnce(t *testing.T) {
	tests := []struct {
		name   string
		req    func(p edgeProxy) string
		reason string
	}{
		{"HTTP/0.9", func(edgeProxy) string { return "GET /\r\n" }, "request line"},
		{"no version, more to come", func(edgeProxy) string { return "GET /index.html\r\nHost: x\r\n" }, "request line"},
		{"bad version", func(edgeProxy) string { return "GET / HTTP/1.1 x\r\n" }, "version"},
		{"HTTP/2 preface", func(edgeProxy) string { return "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" }, "version"},
		{"TLS on the plain port", func(edgeProxy) string { return "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" }, "request line"},
		{"two Host fields", func(p edgeProxy) string { return p.line("GET", "/") + "Host: other.example\r\n\r\n" }, "Host"},
		{"gzip, chunked", func(p edgeProxy) string {
			return p.line("POST", "/") + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
		}, "Transfer-Encoding"},
		{"empty Transfer-Encoding", func(p edgeProxy) string {
			return p.line("POST", "/") + "Transfer-Encoding: \r\nContent-Length: 3\r\n\r\nabc"
		}, "Transfer-Encoding"},
		{"chunked twice", func(p edgeProxy) string {
			return p.line("POST", "/") + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
		}, "Transfer-Encoding"},
	}
	app, open, cut := bodyApp(t)
	proxies := startEdgeProxies(t, app, Config{ReadHeaderTimeout: 30 * time.Second, Dialer: &directDialer{fail: errors.New("must not dial")}})
	cut()
	for name, p := range proxies {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				c, err := net.Dial("tcp", p.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				io.WriteString(c, tt.req(p)) // and nothing more: the connection stays open
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatalf("no answer within 3s (the header timeout is 30s): %v", err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 400 || !strings.Contains(string(b), tt.reason) {
					t.Fatalf("answered %d %q, want 400 about %q", resp.StatusCode, b, tt.reason)
				}
				if n := open.Load(); n != 0 {
					t.Fatalf("the app has %d connections: the request reached it", n)
				}
			})
		}
	}
}

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}
