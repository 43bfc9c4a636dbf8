package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// directDialer reaches targets with a plain net.Dialer and counts dials.
type directDialer struct {
	dials atomic.Int32
	fail  error
}

func (d *directDialer) DialTarget(ctx context.Context, target string) (net.Conn, error) {
	d.dials.Add(1)
	if d.fail != nil {
		return nil, d.fail
	}
	return (&net.Dialer{}).DialContext(ctx, "tcp", target)
}

// refusingDialer's connections refuse the first write with answer, as a
// Dialer whose connection reports the far end's failure late does (an
// early reverse session whose client is going offline).
type refusingDialer struct{ answer *DialError }

func (d refusingDialer) DialTarget(ctx context.Context, target string) (net.Conn, error) {
	a, b := net.Pipe()
	b.Close()
	return refusingConn{a, d.answer}, nil
}

type refusingConn struct {
	net.Conn
	answer *DialError
}

func (c refusingConn) Write([]byte) (int, error) { return 0, c.answer }

func startProxy(t *testing.T, cfg Config) (*Proxy, string) {
	t.Helper()
	if cfg.Dialer == nil {
		cfg.Dialer = &directDialer{}
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return p, ln.Addr().String()
}

// rawTarget serves one TCP connection with serve and returns its
// address; the end of the test closes it and waits for serve.
func rawTarget(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		serve(c)
	})
	return ln.Addr().String()
}

// rawExchange sends raw request bytes to the proxy and returns the parsed
// response with its body.
func rawExchange(t *testing.T, proxy, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, req)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func TestHopByHopAndOrder(t *testing.T) {
	// A raw target that returns the head it received as the body.
	target := rawTarget(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		var head bytes.Buffer
		for {
			line, err := br.ReadString('\n')
			head.WriteString(line)
			if err != nil || line == "\r\n" {
				break
			}
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nKeep-Alive: timeout=5\r\nX-Resp: B\r\n\r\n%s", head.Len(), head.String())
	})
	_, proxy := startProxy(t, Config{})
	resp, body := rawExchange(t, proxy, "GET http://"+target+"/a%20b?c=d HTTP/1.1\r\n"+
		"Host: "+target+"\r\nX-B: 2\r\nx-a: 1\r\nX-B: 3\r\nConnection: X-Drop, keep-alive\r\nX-Drop: gone\r\n"+
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\r\n")
	want := "GET /a%20b?c=d HTTP/1.1\r\nHost: " + target + "\r\nX-B: 2\r\nx-a: 1\r\nX-B: 3\r\nTE: trailers\r\n\r\n"
	if body != want {
		t.Errorf("target received:\n%q\nwant:\n%q", body, want)
	}
	if resp.Header.Get("Keep-Alive") != "" || resp.Header.Get("X-Resp") != "B" {
		t.Errorf("response headers %v", resp.Header)
	}
}

func TestBodies(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/trailer":
			w.Header().Set("Trailer", "X-Sum")
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "len=%d trailer=%s", len(b), r.Trailer.Get("X-Req-Trailer"))
			w.Header().Set("X-Sum", "done")
		case "/204":
			w.WriteHeader(204)
		default:
			h := sha256.New()
			n, _ := io.Copy(h, r.Body)
			fmt.Fprintf(w, "%s %d %x", r.Method, n, h.Sum(nil))
		}
	}))
	defer target.Close()
	dialer := &directDialer{}
	_, proxy := startProxy(t, Config{Dialer: dialer})
	proxyURL, _ := url.Parse("http://" + proxy)
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL)}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	t.Run("chunked request with trailers", func(t *testing.T) {
		req, _ := http.NewRequest("POST", target.URL+"/trailer", io.NopCloser(strings.NewReader("abcdef")))
		req.ContentLength = -1
		req.TransferEncoding = []string{"chunked"}
		req.Trailer = http.Header{"X-Req-Trailer": {"tv"}}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "len=6 trailer=tv" || resp.Trailer.Get("X-Sum") != "done" {
			t.Fatalf("body %q trailer %v", b, resp.Trailer)
		}
	})
	t.Run("expect 100-continue", func(t *testing.T) {
		tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), ExpectContinueTimeout: 5 * time.Second}
		defer tr.CloseIdleConnections()
		body := strings.Repeat("z", 100000)
		req, _ := http.NewRequest("PUT", target.URL+"/x", strings.NewReader(body))
		req.Header.Set("Expect", "100-continue")
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(string(b), "PUT 100000 ") {
			t.Fatalf("got %q", b)
		}
	})
	t.Run("HEAD and 204", func(t *testing.T) {
		resp, err := client.Head(target.URL + "/x")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("HEAD: %v %v", resp, err)
		}
		resp.Body.Close()
		resp, err = client.Get(target.URL + "/204")
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("204: %v %v", resp, err)
		}
		resp.Body.Close()
	})
	t.Run("keep-alive reuses the upstream", func(t *testing.T) {
		before := dialer.dials.Load()
		for range 5 {
			resp, err := client.Get(target.URL + "/k")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if n := dialer.dials.Load() - before; n > 1 {
			t.Errorf("%d dials for 5 keep-alive requests", n)
		}
	})
}

func TestCloseDelimitedResponse(t *testing.T) {
	// A target with no framing: the body ends when it closes.
	target := rawTarget(t, func(c net.Conn) {
		http.ReadRequest(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\nuntil close")
		c.Close()
	})
	_, proxy := startProxy(t, Config{})
	resp, body := rawExchange(t, proxy, "GET http://"+target+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	if body != "until close" || !resp.Close {
		t.Fatalf("body %q close %v", body, resp.Close)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name   string
		dialer Dialer
		req    string
		status int
		body   string
	}{
		{"dial error", &directDialer{fail: errors.New("connection refused")},
			"GET http://198.51.100.1:80/ HTTP/1.1\r\nHost: x\r\n\r\n", 502, "connection refused"},
		{"dialer picks 504", &directDialer{fail: &DialError{Status: 504, Reason: "dial-back timed out"}},
			"CONNECT 198.51.100.1:443 HTTP/1.1\r\nHost: x\r\n\r\n", 504, "dial-back timed out"},
		{"dialer picks 503", &directDialer{fail: &DialError{Status: 503, Reason: "coordinator unreachable"}},
			"GET http://198.51.100.1/ HTTP/1.1\r\n\r\n", 503, "coordinator"},
		{"connection picks 503 on write", refusingDialer{&DialError{Status: 503, Reason: "coordinator went away"}},
			"GET http://198.51.100.1/ HTTP/1.1\r\n\r\n", 503, "coordinator went away"},
		{"malformed", nil, "NOT A REQUEST\r\n\r\n", 400, ""},
		{"origin-form", nil, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "proxy"},
		{"https absolute-form", nil, "GET https://x/ HTTP/1.1\r\n\r\n", 400, "CONNECT"},
		{"CL and TE", nil, "POST http://198.51.100.1/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, ""},
		{"two lengths", nil, "POST http://198.51.100.1/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, ""},
		{"TE not chunked", nil, "POST http://198.51.100.1/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400, ""},
		{"obs-fold", nil, "GET http://198.51.100.1/ HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400, ""},
		{"bad CONNECT", nil, "CONNECT nohostport HTTP/1.1\r\n\r\n", 400, ""},
		{"huge head", nil, "GET http://198.51.100.1/ HTTP/1.1\r\nX: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 431, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.dialer
			if d == nil {
				d = &directDialer{fail: errors.New("must not dial")}
			}
			var log bytes.Buffer
			p, proxy := startProxy(t, Config{Dialer: d, AccessLog: slog.New(slog.NewTextHandler(&log, nil))})
			resp, body := rawExchange(t, proxy, tt.req)
			if resp.StatusCode != tt.status || !strings.Contains(body, tt.body) {
				t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, body, tt.status, tt.body)
			}
			p.Close() // waits for the access-log line
			// The access log records what the client got (a request
			// whose head could not be read has no line).
			lines := strings.Count(log.String(), "msg=request ")
			if want := fmt.Sprintf(" status=%d ", tt.status); strings.Count(log.String(), want) != lines || (tt.dialer != nil && lines != 1) {
				t.Fatalf("access log, want every line with%s:\n%s", want, log.String())
			}
		})
	}
}

func TestSlowHeaderTimesOut(t *testing.T) {
	_, proxy := startProxy(t, Config{ReadHeaderTimeout: 100 * time.Millisecond})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET http://x/ HTTP/1.1\r\n") // and never the rest
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("connection not closed by the proxy: %v", err)
	}
}

func TestCloseEndsTunnels(t *testing.T) {
	echo, _ := net.Listen("tcp", "127.0.0.1:0")
	var wg sync.WaitGroup
	defer func() { echo.Close(); wg.Wait() }()
	wg.Go(func() {
		c, err := echo.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	})
	p, proxy := startProxy(t, Config{})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\n\r\n", echo.Addr())
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(br, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q %v", buf, err)
	}
	p.Close() // must end the live tunnel and return
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("tunnel still open after Close")
	}
}

// FuzzParseRequestHead checks the request parser never panics, and that a
// head it accepts, written back out, parses to the same thing.
func FuzzParseRequestHead(f *testing.F) {
	f.Add("GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\nX-A: 1\r\n\r\n")
	f.Add("POST http://x/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
	f.Add("CONNECT x:443 HTTP/1.0\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n")
	f.Add("GET / HTTP/1.1\nContent-Length: 5\nContent-Length: 5\n\n")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := parseRequestHead(bufio.NewReader(strings.NewReader(s)), 4096)
		if err != nil {
			return
		}
		out := h.method + " " + h.target + fmt.Sprintf(" HTTP/%d.%d\r\n", h.major, h.minor)
		for _, f := range h.fields {
			out += f.raw + "\r\n"
		}
		out += "\r\n"
		h2, err := parseRequestHead(bufio.NewReader(strings.NewReader(out)), 8192)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", out, err)
		}
		if h2.method != h.method || h2.target != h.target || len(h2.fields) != len(h.fields) ||
			h2.contentLength != h.contentLength || h2.chunked != h.chunked || h2.close != h.close || h2.upgrade != h.upgrade {
			t.Fatalf("round trip changed %q", s)
		}
	})
}

// FuzzChunkedRelay checks that relaying a chunked body yields the same
// payload net/http's own chunked reader decodes from it.
func FuzzChunkedRelay(f *testing.F) {
	f.Add("5\r\nhello\r\n0\r\n\r\n")
	f.Add("3;ext=1\r\nabc\r\n0\r\nX-T: v\r\n\r\n")
	f.Add("1\r\nx\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		_, err := copyChunked(bw, bufio.NewReader(strings.NewReader(s)))
		bw.Flush()
		if err != nil {
			return
		}
		want, werr := io.ReadAll(httputil.NewChunkedReader(strings.NewReader(s)))
		got, gerr := io.ReadAll(httputil.NewChunkedReader(&out))
		if werr == nil && (gerr != nil || !bytes.Equal(got, want)) {
			t.Fatalf("relayed %q as %q: payload %q (%v), want %q", s, out.String(), got, gerr, want)
		}
	})
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
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

func TestClientHangingUpIsCanceled(t *testing.T) {
	// A target sending a body far larger than the client will read.
	target := rawTarget(t, func(c net.Conn) {
		defer c.Close()
		http.ReadRequest(bufio.NewReader(c))
		const size = 256 << 20
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size)
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		io.CopyN(c, zeros{}, size) // ends when the proxy gives up on it
	})
	var log syncBuffer
	_, proxy := startProxy(t, Config{AccessLog: slog.New(slog.NewTextHandler(&log, nil))})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET http://%s/big HTTP/1.1\r\nHost: x\r\n\r\n", target)
	if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).SetLinger(0) // hang up with a reset, as browsers do
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(log.String(), "msg=request") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := log.String(); !strings.Contains(got, "outcome=canceled") || !strings.Contains(got, "err=") {
		t.Fatalf("access log does not say the client canceled:\n%s", got)
	}
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestHeaderLinesLongerThanBuffers(t *testing.T) {
	// Lines several times connBufferSize, both ways: read in pieces,
	// passed on whole.
	long := strings.Repeat("c", 3*connBufferSize+17)
	target := rawTarget(t, func(c net.Conn) {
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		got := req.Header.Get("Cookie")
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nX-Long: %s\r\nContent-Length: %d\r\n\r\n%s", long, len(got), got)
	})
	_, proxy := startProxy(t, Config{})
	resp, body := rawExchange(t, proxy, "GET http://"+target+"/ HTTP/1.1\r\nHost: x\r\nCookie: "+long+"\r\n\r\n")
	if body != long {
		t.Errorf("target received a Cookie of %d bytes, want %d", len(body), len(long))
	}
	if got := resp.Header.Get("X-Long"); got != long {
		t.Errorf("client received X-Long of %d bytes, want %d", len(got), len(long))
	}
}

func TestKeepAliveAcrossIdleWaits(t *testing.T) {
	// While a keep-alive connection waits for its next request, its
	// buffers (and its upstream's) go back to the pool; requests after the
	// wait, one at a time or pipelined, must still reuse the upstream and
	// be answered in order.
	var conns atomic.Int32
	target := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Path)
	}))
	target.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	target.Start()
	defer target.Close()
	_, proxy := startProxy(t, Config{})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	get := func(paths ...string) {
		t.Helper()
		var reqs strings.Builder
		for _, p := range paths {
			fmt.Fprintf(&reqs, "GET %s/%s HTTP/1.1\r\nHost: x\r\n\r\n", target.URL, p)
		}
		io.WriteString(c, reqs.String()) // all at once: pipelined when more than one
		for _, p := range paths {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "/"+p {
				t.Fatalf("answer %q to /%s", body, p)
			}
		}
	}
	get("a")
	time.Sleep(50 * time.Millisecond) // idle: buffers parked
	get("b")
	time.Sleep(50 * time.Millisecond)
	get("c", "d", "e")
	if n := conns.Load(); n != 1 {
		t.Fatalf("target saw %d connections, want the upstream reused: 1", n)
	}
}
