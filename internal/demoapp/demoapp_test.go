package demoapp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs Serve on a loopback listener until the test ends and returns
// its base URL and a func that stops it and returns Serve's result.
func serve(t *testing.T) (string, func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, nil) }()
	var result error
	stopped := false
	stop := func() error {
		if !stopped {
			cancel()
			result, stopped = <-done, true
		}
		return result
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), stop
}

func decodeEcho(t *testing.T, resp *http.Response) Echo {
	t.Helper()
	defer resp.Body.Close()
	var e Echo
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatal(err)
	}
	return e
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestEchoRawHeaders writes requests by hand on one connection, pipelined,
// with a chunked body between them, and checks that each echo lists its
// header fields verbatim.
func TestEchoRawHeaders(t *testing.T) {
	base, _ := serve(t)
	c, err := (&net.Dialer{}).DialContext(t.Context(), "tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	requests := "GET /first?a=1&b HTTP/1.1\r\nx-lower: 1\r\nHost: app.test\r\nX-UPPER: 2\r\nx-lower: 3\r\n\r\n" +
		"POST /second HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n" +
		"5\r\nhello\r\n6;ext\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n" +
		"PUT /third HTTP/1.1\r\nContent-Length: 3\r\nhost: app.test\r\n\r\nabc"
	if _, err := io.WriteString(c, requests); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	want := []struct {
		method, path, query, body string
		headers                   []Header
		trailer                   http.Header
	}{
		{"GET", "/first", "a=1&b", "", []Header{{"x-lower", "1"}, {"Host", "app.test"}, {"X-UPPER", "2"}, {"x-lower", "3"}}, nil},
		{"POST", "/second", "", "hello world",
			[]Header{{"Host", "app.test"}, {"Transfer-Encoding", "chunked"}, {"Trailer", "X-Sum"}}, http.Header{"X-Sum": {"11"}}},
		{"PUT", "/third", "", "abc", []Header{{"Content-Length", "3"}, {"host", "app.test"}}, nil},
	}
	for _, w := range want {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := decodeEcho(t, resp)
		if !e.HeadersRaw || !slices.Equal(e.Headers, w.headers) {
			t.Errorf("%s: headers (raw %v) %v, want %v", w.path, e.HeadersRaw, e.Headers, w.headers)
		}
		if e.Method != w.method || e.Path != w.path || e.Query != w.query || e.Host != "app.test" ||
			e.BodyLength != int64(len(w.body)) || e.BodySHA256 != sha(w.body) || e.Proto != "HTTP/1.1" {
			t.Errorf("%s: echo %+v", w.path, e)
		}
		if fmt.Sprint(e.Trailer) != fmt.Sprint(w.trailer) {
			t.Errorf("%s: trailer %v, want %v", w.path, e.Trailer, w.trailer)
		}
		if e.RemoteAddr != c.LocalAddr().String() {
			t.Errorf("%s: remote address %s, want %s", w.path, e.RemoteAddr, c.LocalAddr())
		}
	}
}

// TestEchoParsedHeaders checks the fallback when the handler runs without
// Serve's recorder.
func TestEchoParsedHeaders(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	defer srv.Client().CloseIdleConnections()
	req, _ := http.NewRequestWithContext(t.Context(), "PATCH", srv.URL+"/a/b?x=1", strings.NewReader("hello"))
	req.Header.Add("X-Twice", "1")
	req.Header.Add("X-Twice", "2")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	e := decodeEcho(t, resp)
	host := strings.TrimPrefix(srv.URL, "http://")
	want := []Header{{"Host", host}, {"Accept-Encoding", "gzip"}, {"Content-Length", "5"},
		{"User-Agent", "Go-http-client/1.1"}, {"X-Twice", "1"}, {"X-Twice", "2"}}
	if e.HeadersRaw || !slices.Equal(e.Headers, want) {
		t.Errorf("headers (raw %v) %v, want %v", e.HeadersRaw, e.Headers, want)
	}
	if e.Method != "PATCH" || e.Path != "/a/b" || e.Query != "x=1" || e.BodyLength != 5 || e.BodySHA256 != sha("hello") ||
		strings.Join(e.Header["X-Twice"], ",") != "1,2" || e.Host != host {
		t.Errorf("echo %+v", e)
	}
}

func get(t *testing.T, url string, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestBytes(t *testing.T) {
	base, _ := serve(t)
	defer http.DefaultClient.CloseIdleConnections()
	want := func(off, n int64) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = ByteAt(off + int64(i))
		}
		return b
	}
	tests := []struct {
		name       string
		url        string
		header     []string
		wantStatus int
		wantBody   []byte
	}{
		{"whole", "/bytes?n=200000", nil, 200, want(0, 200000)},
		{"empty", "/bytes?n=0", nil, 200, []byte{}},
		{"range", "/bytes?n=1000", []string{"Range", "bytes=500-509"}, 206, want(500, 10)},
		{"suffix range", "/bytes?n=1000", []string{"Range", "bytes=-3"}, 206, want(997, 3)},
		{"range past the end", "/bytes?n=10", []string{"Range", "bytes=20-"}, 416, nil},
		{"no n", "/bytes", nil, 400, nil},
		{"negative n", "/bytes?n=-1", nil, 400, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, base+tt.url, tt.header...)
			b, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, read error %v; want status %d", resp.StatusCode, err, tt.wantStatus)
			}
			if tt.wantBody == nil {
				return
			}
			if resp.ContentLength != int64(len(tt.wantBody)) || !slices.Equal(b, tt.wantBody) {
				t.Fatalf("Content-Length %d, %d bytes; want %d matching ByteAt", resp.ContentLength, len(b), len(tt.wantBody))
			}
		})
	}
	if ByteAt(0) == ByteAt(256) && ByteAt(1) == ByteAt(257) {
		t.Fatal("the pattern repeats every 256 bytes")
	}
}

func TestSSE(t *testing.T) {
	base, _ := serve(t)
	defer http.DefaultClient.CloseIdleConnections()
	resp := get(t, base+"/sse?n=3&interval=1ms")
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	var data []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			data = append(data, d)
		}
	}
	if !slices.Equal(data, []string{"event 0", "event 1", "event 2"}) {
		t.Fatalf("events %q", data)
	}
	for _, bad := range []string{"/sse", "/sse?n=-1", fmt.Sprintf("/sse?n=%d", MaxSSEEvents+1), "/sse?n=1&interval=2m", "/sse?n=1&interval=x"} {
		if resp := get(t, base+bad); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d", bad, resp.StatusCode)
		}
	}
}

// TestSSEFlushesEachEvent reads the first event while the second is a
// minute away: only a flushed event can arrive. Leaving then ends the
// handler (goleak and Serve's shutdown would notice otherwise).
func TestSSEFlushesEachEvent(t *testing.T) {
	base, _ := serve(t)
	defer http.DefaultClient.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/sse?n=2&interval=1m", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "id: 0\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	cancel()
}

func TestWebsocketEcho(t *testing.T) {
	base, stop := serve(t)
	c, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(base, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(MaxWebsocketMessage)
	for _, m := range []struct {
		typ  websocket.MessageType
		data []byte
	}{{websocket.MessageText, []byte("ping")}, {websocket.MessageBinary, make([]byte, 100_000)}} {
		if err := c.Write(t.Context(), m.typ, m.data); err != nil {
			t.Fatal(err)
		}
		typ, got, err := c.Read(t.Context())
		if err != nil || typ != m.typ || !slices.Equal(got, m.data) {
			t.Fatalf("echo: type %v, %d bytes, %v", typ, len(got), err)
		}
	}
	// Stopping the server ends the hijacked connection too.
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, _, err := c.Read(t.Context()); err == nil {
		t.Fatal("the websocket is still open after Serve returned")
	}
}

func TestHealthzAndServeStops(t *testing.T) {
	base, stop := serve(t)
	resp := get(t, base+"/healthz")
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "ok\n" {
		t.Fatalf("healthz: %d %q", resp.StatusCode, b)
	}
	http.DefaultClient.CloseIdleConnections()
	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Fatal("still serving after Serve returned")
	}
}

func TestServeReportsListenerFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if err := Serve(t.Context(), ln, nil); err == nil || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve on a closed listener = %v", err)
	}
}

func TestPatternReads(t *testing.T) {
	for _, tt := range []struct{ size, seek, buf int64 }{
		{0, 0, 10}, {1, 0, 1}, {100_000, 0, 7}, {100_000, 250, 40_000}, {100_000, 99_990, 100}, {1 << 20, 12345, 1 << 17},
	} {
		p := &pattern{size: tt.size}
		if _, err := p.Seek(tt.seek, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer // reads of tt.buf bytes: the wrappers hide ReadFrom and WriteTo
		_, err := io.CopyBuffer(struct{ io.Writer }{&out}, struct{ io.Reader }{p}, make([]byte, tt.buf))
		got := out.Bytes()
		if err != nil || int64(len(got)) != max(tt.size-tt.seek, 0) {
			t.Fatalf("%+v: read %d bytes, %v", tt, len(got), err)
		}
		for i, b := range got {
			if b != ByteAt(tt.seek+int64(i)) {
				t.Fatalf("%+v: byte %d is %d, want %d", tt, tt.seek+int64(i), b, ByteAt(tt.seek+int64(i)))
			}
		}
	}
}

func BenchmarkBytes(b *testing.B) {
	buf := make([]byte, 64<<10)
	b.SetBytes(int64(len(buf)))
	p := &pattern{size: 1 << 62}
	for b.Loop() {
		p.Read(buf)
	}
}
