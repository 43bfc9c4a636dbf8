package inspector

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func newTest(t *testing.T, cfg Config) (*Inspector, *httptest.Server) {
	t.Helper()
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(in.Handler())
	t.Cleanup(func() { in.Close(); srv.Close() })
	return in, srv
}

// do sends one request to the inspector with the given Host, Origin and
// token ("" leaves each out) and returns the status and body.
func do(t *testing.T, srv *httptest.Server, method, path, host, origin, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if host != "" {
		req.Host = host
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	if token != "" {
		req.Header.Set("X-Inspector-Token", token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRingKeepsTheLastN(t *testing.T) {
	in, srv := newTest(t, Config{History: 3})
	for i := range 5 {
		in.Add(Record{Kind: KindProxy, Method: "GET", Host: "h", Path: fmt.Sprintf("/%d", i)})
	}
	recs := in.Records()
	if len(recs) != 3 || recs[0].Path != "/4" || recs[2].Path != "/2" {
		t.Fatalf("records = %+v, want /4 /3 /2", recs)
	}
	if st, _ := do(t, srv, "GET", "/ui/api/requests/1", "", "", "", ""); st != http.StatusNotFound {
		t.Errorf("evicted record: status %d, want 404", st)
	}
	if st, _ := do(t, srv, "GET", "/ui/api/requests/5", "", "", "", ""); st != http.StatusOK {
		t.Errorf("kept record: status %d, want 200", st)
	}
}

func TestGuard(t *testing.T) {
	in, srv := newTest(t, Config{})
	own := "http://" + srv.Listener.Addr().String()
	for _, tt := range []struct {
		name                       string
		method, path, host, origin string
		token                      string
		want                       int
	}{
		{"page", "GET", "/ui/", "", "", "", http.StatusOK},
		{"localhost", "GET", "/ui/api/requests", "localhost:8118", "", "", http.StatusOK},
		{"IPv6 loopback", "GET", "/ui/api/requests", "[::1]:8118", "", "", http.StatusOK},
		{"rebinding name", "GET", "/ui/api/requests", "attacker.example:8118", "", "", http.StatusForbidden},
		{"localhost-like name", "GET", "/ui/", "localhost.attacker.example", "", "", http.StatusForbidden},
		{"foreign Origin reading", "GET", "/ui/api/requests", "", "http://attacker.example", "", http.StatusForbidden},
		{"foreign Origin acting", "POST", "/ui/api/replay", "", "http://attacker.example", "TOKEN", http.StatusForbidden},
		{"action without token", "POST", "/ui/api/replay", "", own, "", http.StatusForbidden},
		{"action with a wrong token", "POST", "/ui/api/replay", "", own, "00", http.StatusForbidden},
		{"action without Origin", "POST", "/ui/api/replay", "", "", "TOKEN", http.StatusForbidden},
		{"action from the page", "POST", "/ui/api/replay", "", own, "TOKEN", http.StatusNotFound}, // unknown id
		{"GET replay", "GET", "/ui/api/replay", "", "", "", http.StatusMethodNotAllowed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok := strings.ReplaceAll(tt.token, "TOKEN", in.token)
			st, body := do(t, srv, tt.method, tt.path, tt.host, tt.origin, tok, `{"id":12345}`)
			if st != tt.want {
				t.Errorf("status %d, want %d: %s", st, tt.want, body)
			}
		})
	}
}

func TestCredentials(t *testing.T) {
	_, srv := newTest(t, Config{Credentials: func(u, p string) bool { return u == "me" && p == "pw" }})
	for _, tt := range []struct {
		user, pass string
		want       int
	}{{"", "", 401}, {"me", "no", 401}, {"me", "pw", 200}} {
		req, _ := http.NewRequest("GET", srv.URL+"/ui/api/requests", nil)
		if tt.user != "" {
			req.SetBasicAuth(tt.user, tt.pass)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s:%s: status %d, want %d", tt.user, tt.pass, resp.StatusCode, tt.want)
		}
	}
}

// countingApp is a local app that counts its requests and echoes what it
// got, including its Authorization header.
func countingApp(t *testing.T) (addr string, count func() int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		c := n
		mu.Unlock()
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Set-Cookie", "s=cookie-secret")
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", "1000")
			return
		}
		fmt.Fprintf(w, "n=%d %s %s auth=%s body=%s", c, r.Method, r.URL.RequestURI(), r.Header.Get("Authorization"), body)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// exchange sends raw requests over one captured connection to the app
// and reads the responses.
func exchange(t *testing.T, in *Inspector, app, raw string, responses int, methods ...string) {
	t.Helper()
	conn, err := net.Dial("tcp", app)
	if err != nil {
		t.Fatal(err)
	}
	c := in.Capture(conn, "app", app, "203.0.113.7:5555", "sess1")
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i := range responses {
		resp, err := http.ReadResponse(br, &http.Request{Method: methods[i]})
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

func waitDone(t *testing.T, in *Inspector, n int) []Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := in.Records()
		done := 0
		for _, r := range recs {
			if r.Done {
				done++
			}
		}
		if done >= n {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d records done, want %d: %+v", done, n, recs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCapturePipelined(t *testing.T) {
	in, _ := newTest(t, Config{BodyLimit: 16})
	app, _ := countingApp(t)
	raw := "GET /a?x=1 HTTP/1.1\r\nHost: app.example\r\nAuthorization: Bearer tok-secret\r\n\r\n" +
		"POST /b HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" +
		"PUT /c HTTP/1.1\r\nHost: app.example\r\nContent-Length: 40\r\n\r\n" + strings.Repeat("z", 40) +
		"HEAD /d HTTP/1.1\r\nHost: app.example\r\n\r\n"
	exchange(t, in, app, raw, 4, "GET", "POST", "PUT", "HEAD")
	recs := waitDone(t, in, 4)
	if len(recs) != 4 {
		t.Fatalf("%d records, want 4", len(recs))
	}
	want := []struct {
		method, path string
		up           int64
		reqBody      string
		reqCut       bool
	}{{"HEAD", "/d", 0, "", false}, {"PUT", "/c", 40, strings.Repeat("z", 16), true}, {"POST", "/b", 11, "hello world", false}, {"GET", "/a?x=1", 0, "", false}}
	for i, w := range want {
		r := recs[i]
		if r.Kind != KindPublic || r.Method != w.method || r.Path != w.path || r.Status != 200 || r.Up != w.up ||
			r.Service != "app" || r.Client != "203.0.113.7:5555" || r.Host != "app.example" || !r.Detail {
			t.Errorf("record %d = %+v, want %s %s up %d", i, r, w.method, w.path, w.up)
		}
		in.mu.Lock()
		d := *in.byID[r.ID].detail
		in.mu.Unlock()
		if string(d.ReqBody) != w.reqBody || d.ReqCut != w.reqCut {
			t.Errorf("%s body %q cut %v, want %q cut %v", w.method, d.ReqBody, d.ReqCut, w.reqBody, w.reqCut)
		}
		if w.method != "HEAD" && !strings.HasPrefix(string(d.RespBody), "n=") {
			t.Errorf("%s response body %q", w.method, d.RespBody)
		}
	}
}

func TestDetailMasksSecrets(t *testing.T) {
	in, srv := newTest(t, Config{})
	app, _ := countingApp(t)
	exchange(t, in, app, "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok-secret\r\nCookie: c=cookie-secret\r\n\r\n", 1, "GET")
	recs := waitDone(t, in, 1)
	path := fmt.Sprintf("/ui/api/requests/%d", recs[0].ID)
	for _, tt := range []struct {
		query, token string
		shown        bool
	}{{"", "", false}, {"?unmask=1", "", false}, {"?unmask=1", in.token, true}} {
		_, body := do(t, srv, "GET", path+tt.query, "", "", tt.token, "")
		for _, secret := range []string{"tok-secret", "cookie-secret"} {
			if strings.Contains(body, secret) != tt.shown {
				t.Errorf("%s token %v: %s shown %v, want %v: %s", tt.query, tt.token != "", secret, !tt.shown, tt.shown, body)
			}
		}
		if !tt.shown && !strings.Contains(body, "Bearer ••••••") {
			t.Errorf("masked Authorization missing: %s", body)
		}
	}
}

func TestReplay(t *testing.T) {
	in, srv := newTest(t, Config{})
	app, count := countingApp(t)
	exchange(t, in, app, "POST /orders?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok-secret\r\nContent-Length: 3\r\n\r\nabc", 1, "POST")
	id := waitDone(t, in, 1)[0].ID
	own := "http://" + srv.Listener.Addr().String()
	for _, tt := range []struct {
		name, req, want string
	}{
		{"as is", fmt.Sprintf(`{"id":%d}`, id), "n=2 POST /orders?x=1 auth=Bearer tok-secret body=abc"},
		// The masked value the page shows stands for the captured one.
		{"edited", fmt.Sprintf(`{"id":%d,"method":"PUT","path":"/other","headers":[["Host","a"],["Authorization","Bearer ••••••"]],"body":"xyz"}`, id),
			"n=3 PUT /other auth=Bearer tok-secret body=xyz"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, body := do(t, srv, "POST", "/ui/api/replay", "", own, in.token, tt.req)
			if st != http.StatusOK {
				t.Fatalf("status %d: %s", st, body)
			}
			var out struct{ ID uint64 }
			json.Unmarshal([]byte(body), &out)
			in.mu.Lock()
			r := in.byID[out.ID]
			got := string(r.detail.RespBody)
			kind := r.Kind
			in.mu.Unlock()
			if got != tt.want || kind != KindReplay {
				t.Errorf("replay %s answered %q, want %q", kind, got, tt.want)
			}
		})
	}
	if n := count(); n != 3 {
		t.Errorf("app saw %d requests, want 3", n)
	}
}

func TestAddPublicCompletesTheCapturedRequest(t *testing.T) {
	in, _ := newTest(t, Config{})
	app, _ := countingApp(t)
	exchange(t, in, app, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 1, "GET")
	waitDone(t, in, 1)
	// After the capture.
	in.AddPublic(Record{Method: "GET", Path: "/x", Status: 200, Client: "198.51.100.9:1234", TLS: true, Outcome: "ok", Service: "app"}, "sess1")
	// Before the capture (it lags behind): waits for it.
	in.AddPublic(Record{Method: "GET", Path: "/z", Status: 200, Client: "198.51.100.9:1234", Outcome: "ok", Service: "app"}, "sess1")
	// coordinator answered itself: no capture ever comes.
	in.AddPublic(Record{Method: "GET", Path: "/y", Status: 401, Client: "198.51.100.9:1234", Outcome: "authentication required", Service: "app"}, "sess1")
	exchange(t, in, app, "GET /z HTTP/1.1\r\nHost: a\r\n\r\n", 1, "GET")
	waitDone(t, in, 2)
	in.flushPending(time.Now().Add(publicWait + time.Second))
	recs := in.Records()
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3: %+v", len(recs), recs)
	}
	if r := recs[2]; r.Path != "/x" || r.Client != "198.51.100.9:1234" || !r.TLS || !r.Detail || !r.logged {
		t.Errorf("captured record not completed by coordinator's: %+v", r)
	}
	if r := recs[1]; r.Path != "/z" || r.Client != "198.51.100.9:1234" || !r.Detail || !r.logged {
		t.Errorf("capture after coordinator's record not completed by it: %+v", r)
	}
	if r := recs[0]; r.Path != "/y" || r.Status != 401 || r.Detail {
		t.Errorf("coordinator's own answer: %+v", r)
	}
}

func TestEventsStream(t *testing.T) {
	in, srv := newTest(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/ui/api/events", nil)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	br.ReadString('\n') // retry:
	in.Add(Record{Kind: KindProxy, Method: "GET", Host: "example.test", Path: "/live"})
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			var r Record
			if err := json.Unmarshal([]byte(data), &r); err != nil || r.Path != "/live" {
				t.Fatalf("event %q: %v", data, err)
			}
			return
		}
	}
}

// A parser that falls behind gives up; the connection's bytes still flow.
// It falls behind by chunks, by bytes per connection, or by bytes of all
// connections together; what it took or dropped is no longer counted.
func TestFeedGivesUpWhenBehind(t *testing.T) {
	tests := []struct {
		name       string
		chunk      int
		othersHeld int64 // bytes other feeds hold
		want       int   // chunks queued before it gives up
	}{
		{"chunks", 1, 0, feedSlots},
		{"bytes", feedBytes / 4, 0, 4},
		{"bytes of every capture", 1 << 10, captureBytes - 3<<10, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var total atomic.Int64
			total.Store(tt.othersHeld)
			f := newFeed(&total)
			for range feedSlots + 1 {
				f.push(make([]byte, tt.chunk))
			}
			n := 0
			for chunk := range f.ch {
				f.taken(chunk)
				n++
			}
			if !f.ended || n != tt.want {
				t.Fatalf("ended %v after %d chunks, want ended after %d", f.ended, n, tt.want)
			}
			if f.queued != 0 || total.Load() != tt.othersHeld {
				t.Fatalf("after the parser took every chunk: %d bytes queued, %d in all, want 0 and %d", f.queued, total.Load(), tt.othersHeld)
			}
		})
	}
}

func FuzzCapture(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	f.Add([]byte("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), []byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"))
	f.Add([]byte("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00"), []byte("HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x00"))
	f.Fuzz(func(t *testing.T, req, resp []byte) {
		in, err := New(Config{History: 8, BodyLimit: 64})
		if err != nil {
			t.Fatal(err)
		}
		a, b := net.Pipe()
		c := in.Capture(a, "app", "127.0.0.1:1", "203.0.113.1:1", "s")
		go func() { b.Write(resp); b.Close() }()
		go io.Copy(io.Discard, b)
		c.Write(req)
		io.Copy(io.Discard, c)
		c.Close() // waits for the parsers: a hang fails the fuzz run
		if n := len(in.Records()); n > 8 {
			t.Fatalf("%d records kept, history 8", n)
		}
	})
}

// BenchmarkCapture measures what capturing costs a download from an
// exposed app: 8 MiB responses over loopback TCP, plain or captured.
func BenchmarkCapture(b *testing.B) {
	body := strings.Repeat("x", 8<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	for _, captured := range []bool{false, true} {
		b.Run(fmt.Sprintf("captured=%v", captured), func(b *testing.B) {
			in, _ := New(Config{})
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				if captured {
					conn = in.Capture(conn, "app", addr, "203.0.113.1:1", "s")
				}
				io.WriteString(conn, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
				io.Copy(io.Discard, conn)
				conn.Close()
			}
		})
	}
}

// The relay resets a connection it gives up on: the app must see an RST,
// not a clean end, through the capture too.
func TestCaptureResetReachesTheApp(t *testing.T) {
	in, _ := newTest(t, Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(io.Discard, c)
		got <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := in.Capture(conn, "app", ln.Addr().String(), "203.0.113.1:1", "s")
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npartial")
	// As relay.reset does.
	if r, ok := c.(interface{ Reset() error }); ok {
		r.Reset()
	} else {
		c.Close()
	}
	if err := <-got; err == nil {
		t.Fatal("the app saw a clean end of a reset connection")
	}
}

// The rest of a body past the size cap is skipped rather than copied to the
// parser: the 4 MiB written at once after the kept part would make a parser
// that copies it give up (more than feedBytes queued), and then miss the
// request after it. The record still counts the whole body, and is complete
// when it has gone by.
func TestCaptureSkipsLongBodies(t *testing.T) {
	const limit = 1 << 10
	const size = 4 << 20
	in, _ := newTest(t, Config{BodyLimit: limit})
	big := strings.Repeat("0123456789abcdef", size/16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/after" {
			fmt.Fprintf(w, "got %d", n)
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(big)))
		io.WriteString(w, big)
	}))
	t.Cleanup(srv.Close)
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := in.Capture(conn, "app", "app", "203.0.113.1:1", "s")
	defer c.Close()
	fmt.Fprintf(c, "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", size)
	io.WriteString(c, big[:limit])
	// Once the parser skips, the rest in one write.
	skipping := func(f *feed) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			f.mu.Lock()
			skipping := f.skipTo > 0
			f.mu.Unlock()
			if skipping {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the parser does not skip the body")
			}
		}
	}
	skipping(c.(*captureConn).req)
	io.WriteString(c, big[limit:])
	// The same for the response (whose parser a busy machine might
	// otherwise leave behind, which is not what this test is about).
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, limit)); err != nil {
		t.Fatal(err)
	}
	skipping(c.(*captureConn).resp)
	if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != size-limit {
		t.Fatalf("read %d more bytes of the response (%v), want %d", n, err, size-limit)
	}
	io.WriteString(c, "POST /after HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
	if resp, err = http.ReadResponse(br, &http.Request{Method: "POST"}); err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	recs := waitDone(t, in, 2)
	want := []struct {
		path              string
		up, down          int64
		reqBody, respBody string
		cut               bool
	}{{"/after", 2, 5, "hi", "got 2", false}, {"/big", size, size, big[:limit], big[:limit], true}}
	for i, w := range want {
		r := recs[i]
		in.mu.Lock()
		d := *in.byID[r.ID].detail
		in.mu.Unlock()
		if r.Path != w.path || r.Up != w.up || r.Down != w.down || r.Status != 200 || string(d.ReqBody) != w.reqBody ||
			string(d.RespBody) != w.respBody || d.ReqCut != w.cut || d.RespCut != w.cut {
			t.Errorf("record %s: %+v, kept %d and %d bytes (cut %v %v); want up %d down %d", w.path, r, len(d.ReqBody), len(d.RespBody),
				d.ReqCut, d.RespCut, w.up, w.down)
		}
	}
}
