package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// h2App is an app behind the HTTP/2 tests: it echoes what it was told
// about the request, hashes uploads, serves downloads of any size, and
// counts the connections the proxy opened to it.
func h2App(t *testing.T, name string) (addr string, conns *atomic.Int64) {
	t.Helper()
	conns = new(atomic.Int64)
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				return
			}
			fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
		case "/download":
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			w.Header().Set("Content-Length", strconv.Itoa(n))
			io.Copy(w, io.LimitReader(&pattern{}, int64(n)))
		case "/chunked":
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			w.(http.Flusher).Flush() // no Content-Length: chunked
			io.Copy(w, io.LimitReader(&pattern{}, int64(n)))
		default:
			fmt.Fprintf(w, "app=%s host=%s proto=%s xff=%s xfproto=%s fwd=%s auth=%q", name, r.Host, r.Proto,
				r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("Forwarded"), r.Header.Get("Authorization"))
		}
	}))
	app.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	app.Start()
	t.Cleanup(app.Close)
	return app.Listener.Addr().String(), conns
}

// pattern is an endless stream of bytes that are not all alike, the
// same whatever the sizes of the reads.
type pattern struct{ off int }

func (r *pattern) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r.off*7 + r.off/251)
		r.off++
	}
	return len(p), nil
}

// h2Backend is one exposed app: at addr, maybe behind credentials, maybe
// closed to every source.
type h2Backend struct {
	addr   string
	auth   *BasicAuth
	closed bool
}

func (b h2Backend) Name() string { return "app-" + b.addr }
func (b h2Backend) Dial(ctx context.Context, _ netip.AddrPort) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, "tcp", b.addr)
}
func (b h2Backend) BasicAuth() *BasicAuth                   { return b.auth }
func (b h2Backend) AllowsSource(remote netip.AddrPort) bool { return !b.closed }

// h2Router routes by host name, without the port.
type h2Router map[string]h2Backend

func (r h2Router) Route(host string) (Backend, error) {
	name, _, _ := strings.Cut(host, ":")
	if b, ok := r[name]; ok {
		return b, nil
	}
	return nil, &DialError{Status: http.StatusNotFound, Reason: "no app is exposed as " + host}
}

// startH2Proxy serves routes on a TLS listener offering h2 and http/1.1,
// and returns its address, the access log and the proxy.
func startH2Proxy(t *testing.T, routes h2Router, bodyTimeout time.Duration) (string, *syncBuffer, *ReverseProxy) {
	t.Helper()
	log := &syncBuffer{}
	p, err := NewReverse(ReverseConfig{Router: routes, AccessLog: slog.New(slog.NewTextHandler(log, nil)), BodyReadTimeout: bodyTimeout})
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, _ := testTLSConfigs(t)
	serverTLS.NextProtos = []string{"h2", "http/1.1"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(tls.NewListener(ln, serverTLS)) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), log, p
}

// h2Client is an HTTP/2 client (golang.org/x/net/http2) whose every
// request, whatever its URL's host, goes over one connection to proxy.
func h2Client(t *testing.T, proxy string) *http.Client {
	t.Helper()
	_, clientTLS := testTLSConfigs(t)
	tr := &http2.Transport{TLSClientConfig: clientTLS,
		DialTLSContext: func(ctx context.Context, network, _ string, cfg *tls.Config) (net.Conn, error) {
			return (&tls.Dialer{Config: cfg}).DialContext(ctx, network, proxy)
		}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func get(t *testing.T, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Proto != "HTTP/2.0" {
		t.Fatalf("response over %s, want HTTP/2.0", resp.Proto)
	}
	return resp, string(body)
}

// TestH2Routes checks that HTTP/2 requests are routed, guarded and
// answered as HTTP/1.1 ones are: by name, with the forwarding fields,
// basic auth, allow-from and the unknown-name page, each logged with its
// protocol; the app gets HTTP/1.1.
func TestH2Routes(t *testing.T) {
	a, _ := h2App(t, "a")
	b, _ := h2App(t, "b")
	auth := NewBasicAuth(&Credentials{User: "u", Password: "p"})
	proxy, log, _ := startH2Proxy(t, h2Router{"a.example": {addr: a}, "b.example": {addr: b},
		"guarded.example": {addr: a, auth: auth}, "closed.example": {addr: a, closed: true}}, 0)
	c := h2Client(t, proxy)
	tests := []struct {
		name, host, user string
		status           int
		body             string // the body contains it
	}{
		{"app a", "a.example", "", 200, `app=a host=a.example proto=HTTP/1.1 xff=127.0.0.1 xfproto=https fwd=for=127.0.0.1;host="a.example";proto=https auth=""`},
		{"app b", "b.example", "", 200, "app=b host=b.example"},
		{"no credentials", "guarded.example", "", 401, "401 Unauthorized: this app requires a user name and password"},
		{"wrong credentials", "guarded.example", "u:x", 401, "401 Unauthorized: wrong user name or password"},
		{"credentials", "guarded.example", "u:p", 200, `app=a host=guarded.example proto=HTTP/1.1 xff=127.0.0.1`},
		{"allow-from", "closed.example", "", 403, "403 Forbidden: closed.example is not open to your address 127.0.0.1"},
		{"unknown name", "nobody.example", "", 404, "404 Not Found: no app is exposed as nobody.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), "GET", "https://"+tt.host+"/", nil)
			req.Header.Set("X-Forwarded-For", "203.0.113.9") // forged: must not reach the app
			if user, pass, ok := strings.Cut(tt.user, ":"); ok {
				req.SetBasicAuth(user, pass)
			}
			resp, body := get(t, c, req)
			if resp.StatusCode != tt.status || !strings.Contains(body, tt.body) {
				t.Fatalf("got %d %q, want %d with %q", resp.StatusCode, body, tt.status, tt.body)
			}
			if tt.status == 401 && resp.Header.Get("WWW-Authenticate") != `Basic realm="guarded.example", charset="UTF-8"` {
				t.Errorf("challenge %q", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}
	waitUntil(t, "the access-log lines", func() bool { return strings.Count(log.String(), "proto=HTTP/2.0") == len(tests) })
	for _, want := range []string{"target=a.example/ status=200", "target=guarded.example/ status=401",
		"target=nobody.example/ status=404", "tls=true outcome=ok proto=HTTP/2.0"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("access log lacks %q:\n%s", want, log)
		}
	}
}

// TestH2Bodies relays large bodies both ways, with and without a length,
// and many concurrent requests over one client connection, which reuse
// the upstream connections instead of opening one each.
func TestH2Bodies(t *testing.T) {
	a, conns := h2App(t, "a")
	proxy, _, p := startH2Proxy(t, h2Router{"a.example": {addr: a}}, 0)
	c := h2Client(t, proxy)
	const size = 8<<20 + 3
	sum := sha256.Sum256(must(io.ReadAll(io.LimitReader(&pattern{}, size))))
	want := fmt.Sprintf("%d %s", size, hex.EncodeToString(sum[:]))

	t.Run("upload with length", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", "https://a.example/upload",
			bytes.NewReader(must(io.ReadAll(io.LimitReader(&pattern{}, size)))))
		if _, body := get(t, c, req); body != want {
			t.Fatalf("app read %q, want %q", body, want)
		}
	})
	t.Run("upload without length", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", "https://a.example/upload", io.NopCloser(io.LimitReader(&pattern{}, size)))
		if _, body := get(t, c, req); body != want {
			t.Fatalf("app read %q, want %q", body, want)
		}
	})
	for _, path := range []string{"/download", "/chunked"} {
		t.Run(path, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), "GET", "https://a.example"+path+"?n="+strconv.Itoa(size), nil)
			_, body := get(t, c, req)
			if got := sha256.Sum256([]byte(body)); got != sum {
				t.Fatalf("downloaded %d bytes with another hash", len(body))
			}
		})
	}
	t.Run("concurrent streams", func(t *testing.T) {
		before := conns.Load()
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 64 {
			wg.Go(func() {
				req, _ := http.NewRequestWithContext(t.Context(), "GET", fmt.Sprintf("https://a.example/%d", i), nil)
				resp, err := c.Do(req)
				if err != nil {
					errs <- err
					return
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), "app=a") {
					errs <- fmt.Errorf("%d %q %v", resp.StatusCode, body, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if s := p.Stats(); s.ActiveConns != 1 {
			t.Errorf("%d client connections open, want the one", s.ActiveConns)
		}
		if opened := conns.Load() - before; opened > h2MaxIdleUpstreams+64/2 {
			t.Logf("%d upstream connections opened for 64 requests", opened)
		}
		// Sequential requests reuse one idle upstream.
		before = conns.Load()
		for range 10 {
			req, _ := http.NewRequestWithContext(t.Context(), "GET", "https://a.example/", nil)
			get(t, c, req)
		}
		if opened := conns.Load() - before; opened != 0 {
			t.Errorf("%d upstream connections opened for 10 sequential requests, want them reused", opened)
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestH2BodyTimeout sends a body that stops arriving: the request is
// answered 408, as over HTTP/1.1, and the connection serves the next one.
func TestH2BodyTimeout(t *testing.T) {
	a, _ := h2App(t, "a")
	proxy, log, _ := startH2Proxy(t, h2Router{"a.example": {addr: a}}, 200*time.Millisecond)
	c := h2Client(t, proxy)
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("part of a body"))
	req, _ := http.NewRequestWithContext(t.Context(), "POST", "https://a.example/upload", pr)
	req.ContentLength = 1000
	resp, body := get(t, c, req)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(body, "request body stopped arriving") {
		t.Fatalf("got %d %q, want 408", resp.StatusCode, body)
	}
	req, _ = http.NewRequestWithContext(t.Context(), "GET", "https://a.example/", nil)
	if resp, _ := get(t, c, req); resp.StatusCode != 200 {
		t.Fatalf("next request: %d", resp.StatusCode)
	}
	waitUntil(t, "the 408's log line", func() bool {
		return strings.Contains(log.String(), "status=408") && strings.Contains(log.String(), "proto=HTTP/2.0")
	})
}

// TestH2AndHTTP1OnOnePort checks that a client offering only http/1.1 is
// served over HTTP/1.1 on the port that offers h2.
func TestH2AndHTTP1OnOnePort(t *testing.T) {
	a, _ := h2App(t, "a")
	proxy, log, _ := startH2Proxy(t, h2Router{"a.example": {addr: a}}, 0)
	_, clientTLS := testTLSConfigs(t)
	tr := &http.Transport{TLSClientConfig: clientTLS, DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, proxy)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://a.example/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Proto != "HTTP/1.1" || !strings.Contains(string(body), "app=a") {
		t.Fatalf("got %s %q", resp.Proto, body)
	}
	waitUntil(t, "the log line", func() bool {
		return strings.Contains(log.String(), "status=200") && strings.Contains(log.String(), "proto=HTTP/1.1")
	})
}

// TestH2ResetStreamEndsUpstream: a client that gives up a request (a
// long poll the app has not answered) resets its stream; the proxy lets
// go of the app's connection at once, logs the request canceled, and
// the connection serves on.
func TestH2ResetStreamEndsUpstream(t *testing.T) {
	started, left := make(chan struct{}), make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/poll" {
			close(started)
			<-r.Context().Done() // the proxy closed the connection
			close(left)
			return
		}
		io.WriteString(w, "app=a")
	}))
	t.Cleanup(app.Close)
	proxy, log, _ := startH2Proxy(t, h2Router{"a.example": {addr: app.Listener.Addr().String()}}, 0)
	c := h2Client(t, proxy)
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, "GET", "https://a.example/poll", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-started
	cancel()
	if err := <-done; err == nil {
		t.Fatal("the canceled request succeeded")
	}
	select {
	case <-left:
	case <-time.After(10 * time.Second):
		t.Fatal("the app's connection stayed open after the client reset its stream")
	}
	waitUntil(t, "the canceled request's log line", func() bool {
		return strings.Contains(log.String(), "target=a.example/poll") && strings.Contains(log.String(), "outcome=canceled proto=HTTP/2.0")
	})
	req, _ = http.NewRequestWithContext(t.Context(), "GET", "https://a.example/", nil)
	if resp, body := get(t, c, req); resp.StatusCode != 200 || body != "app=a" {
		t.Fatalf("next request: %d %q", resp.StatusCode, body)
	}
}

// TestH2Drain: draining sends an idle HTTP/2 connection GOAWAY; it closes
// and Drain returns, while a request in flight finishes first.
func TestH2Drain(t *testing.T) {
	a, _ := h2App(t, "a")
	proxy, _, p := startH2Proxy(t, h2Router{"a.example": {addr: a}}, 0)
	c := h2Client(t, proxy)
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "https://a.example/", nil)
	get(t, c, req)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := p.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if s := p.Stats(); s.ActiveConns != 0 {
		t.Errorf("%d connections open after Drain", s.ActiveConns)
	}
}

// TestH2CutResponse: an app that closes in the middle of a chunked body:
// the client's stream is reset, so it sees an error rather than a short
// body taken for whole.
func TestH2CutResponse(t *testing.T) {
	app := rawTarget(t, func(c net.Conn) {
		defer c.Close()
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly this\r\n")
	})
	proxy, log, _ := startH2Proxy(t, h2Router{"a.example": {addr: app}}, 0)
	c := h2Client(t, proxy)
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "https://a.example/", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("a cut body read as whole: %q", body)
	}
	waitUntil(t, "the log line", func() bool {
		return strings.Contains(log.String(), "target=a.example/ status=200 bytes_up=0 bytes_down=9") &&
			strings.Contains(log.String(), "outcome=\"response body: ")
	})
}

// FuzzHeadFromH2 converts HTTP/2 requests with any fields x/net lets
// through: the head says the same method, target, Host and field values,
// and it frames the body as the request does.
func FuzzHeadFromH2(f *testing.F) {
	f.Add("GET", "/a?b=c", "app.example", "X-Test", "value", int64(0))
	f.Add("POST", "/upload", "app.example:8443", "Cookie", "a=b", int64(-1))
	f.Add("PUT", "*", "[::1]:443", "Content-Length", "5", int64(5))
	f.Fuzz(func(t *testing.T, method, path, host, name, value string, length int64) {
		if !httpguts.ValidHostHeader(host) || !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) ||
			method == "" || strings.ContainsAny(method, " \t\r\n") || path == "" || strings.ContainsAny(path, " \t\r\n") || length < -1 {
			t.Skip("x/net refuses such a request")
		}
		r := &http.Request{Method: method, RequestURI: path, Host: host, Header: http.Header{}, ContentLength: length}
		r.Header.Add(name, value)
		h, err := headFromH2(r, 64<<10)
		if err != nil {
			return // refused by the HTTP/1.1 parser: answered 400
		}
		if h.method != method || h.target != path {
			t.Fatalf("request line %q %q, want %q %q", h.method, h.target, method, path)
		}
		if got, _ := h.get("Host"); got != strings.TrimSpace(host) {
			t.Fatalf("Host %q, want %q", got, host)
		}
		switch canon := http.CanonicalHeaderKey(name); canon {
		case "Host", "Content-Length", "Transfer-Encoding":
		default:
			if got, ok := h.get(canon); !ok || got != strings.Trim(value, " \t") {
				t.Fatalf("%s: %q, want %q", canon, got, value)
			}
		}
		if h.chunked != (length < 0) || (length > 0 && h.contentLength != length) {
			t.Fatalf("framing chunked=%v length=%d for ContentLength %d", h.chunked, h.contentLength, length)
		}
	})
}
