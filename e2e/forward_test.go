package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"quictunnel/internal/coordinator"
)

// patternReader yields n deterministic bytes (byte i is i*7 mod 251)
// without holding them, fast enough not to limit a benchmark.
type patternReader struct{ n, off int64 }

// patternTable holds the pattern twice over 64 KiB, so any read of up to
// 64 KiB is one copy starting at off mod 251.
var patternTable = func() []byte {
	b := make([]byte, 251+64<<10)
	for i := range b {
		b[i] = byte(i * 7 % 251)
	}
	return b
}()

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off, 64<<10)]
	copy(b, patternTable[p.off%251:])
	p.off += int64(len(b))
	return len(b), nil
}

func patternSHA(n int64) string {
	h := sha256.New()
	io.Copy(h, &patternReader{n: n})
	return hex.EncodeToString(h.Sum(nil))
}

// bulkHandler serves GET /bytes?n=N (pattern data) and answers any other
// request with the sha256 and length of its body.
func bulkHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		io.Copy(w, &patternReader{n: n})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprintf(w, "%s %d %s", r.Method, n, hex.EncodeToString(h.Sum(nil)))
	})
	return mux
}

func startTarget(t *testing.T, host string, h http.Handler) *httptest.Server {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func TestForwardProxy(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			l := startLab(t, labOptions{host: host})
			target := startTarget(t, host, bulkHandler())
			client := l.httpClient(t, nil, false)
			const size = 64 << 20

			t.Run("GET 64MiB", func(t *testing.T) {
				resp, err := client.Get(target.URL + "/bytes?n=" + strconv.Itoa(size))
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				h := sha256.New()
				n, err := io.Copy(h, resp.Body)
				if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != patternSHA(size) {
					t.Fatalf("download: %d bytes, err %v, sha mismatch or short", n, err)
				}
			})
			t.Run("POST 64MiB", func(t *testing.T) {
				req, _ := http.NewRequestWithContext(t.Context(), "POST", target.URL+"/upload", &patternReader{n: size})
				req.ContentLength = size
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := fmt.Sprintf("POST %d %s", size, patternSHA(size)); string(body) != want {
					t.Fatalf("upload answer %q, want %q", body, want)
				}
			})
			t.Run("chunked PUT", func(t *testing.T) {
				req, _ := http.NewRequestWithContext(t.Context(), "PUT", target.URL+"/x", io.NopCloser(&patternReader{n: 1 << 20}))
				req.ContentLength = -1 // chunked
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := fmt.Sprintf("PUT %d %s", 1<<20, patternSHA(1<<20)); string(body) != want {
					t.Fatalf("answer %q, want %q", body, want)
				}
			})
			t.Run("access log", func(t *testing.T) {
				// Sessions are logged when they end: end the kept-alive ones.
				client.CloseIdleConnections()
				waitFor(t, "access log lines", func() bool {
					return strings.Contains(l.proxyLog.String(), "/upload") && strings.Contains(l.coordLog.String(), "bytes_up=")
				})
			})
		})
	}
}

func TestHeadersPreserved(t *testing.T) {
	l := startLab(t, labOptions{})
	target := newRawTarget(t, "127.0.0.1")
	conn, err := net.Dial("tcp", l.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := "GET http://" + target.addr() + "/path?q=1&r=%20 HTTP/1.1\r\n" +
		"Host: " + target.addr() + "\r\n" +
		"X-Custom-CASE: MiXeD\r\n" +
		"x-lower: yes\r\n" +
		"X-Repeat: one\r\n" +
		"Accept: */*\r\n" +
		"X-Repeat: two\r\n" +
		"Proxy-Connection: keep-alive\r\n" +
		"Proxy-Authorization: Basic c2VjcmV0\r\n" +
		"Connection: close, X-Hop\r\n" +
		"X-Hop: drop me\r\n" +
		"\r\n"
	io.WriteString(conn, req)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	head := target.lastHead()
	if !strings.HasPrefix(head, "GET /path?q=1&r=%20 HTTP/1.1\r\n") {
		t.Errorf("request line not rewritten to origin-form: %q", strings.SplitN(head, "\r\n", 2)[0])
	}
	var got []string
	for _, line := range headerLines(head) {
		if !strings.HasPrefix(line, "Connection:") { // a proxy may send its own
			got = append(got, line)
		}
	}
	want := []string{"Host: " + target.addr(), "X-Custom-CASE: MiXeD", "x-lower: yes", "X-Repeat: one", "Accept: */*", "X-Repeat: two"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("headers at target:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestConnectTLSAndHTTP2(t *testing.T) {
	l := startLab(t, labOptions{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "proto=%s", r.Proto)
	})}, EnableHTTP2: true}
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	client := l.httpClient(t, roots, true)
	resp, err := client.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "proto=HTTP/2.0" || resp.ProtoMajor != 2 {
		t.Fatalf("got %q over %s, want HTTP/2 through CONNECT", body, resp.Proto)
	}
}

func TestWebsocketThroughConnect(t *testing.T) {
	l := startLab(t, labOptions{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	client := l.httpClient(t, roots, false)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(srv.URL, "https", "wss", 1), &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatalf("websocket dial through proxy: %v", err)
	}
	defer c.CloseNow()
	for i := range 10 {
		msg := fmt.Sprintf("message %d", i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != msg {
			t.Fatalf("echo %q, %v; want %q", got, err, msg)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
}

func TestConcurrentSessions(t *testing.T) {
	l := startLab(t, labOptions{})
	target := startTarget(t, "127.0.0.1", bulkHandler())
	const n = 200
	// One connection per request, so every request is its own session.
	tr := &http.Transport{Proxy: http.ProxyURL(l.proxyURL), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			body := strings.Repeat("x", i*100)
			resp, err := client.Post(target.URL+"/p", "text/plain", strings.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			sum := sha256.Sum256([]byte(body))
			if want := fmt.Sprintf("POST %d %s", len(body), hex.EncodeToString(sum[:])); string(got) != want {
				errs <- fmt.Errorf("request %d: %q", i, got)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := l.coord.Server().Stats().Sessions; got < n {
		t.Errorf("coordinator saw %d sessions, want >= %d", got, n)
	}
}

func TestErrorsReachTheBrowser(t *testing.T) {
	t.Run("target down is 502", func(t *testing.T) {
		l := startLab(t, labOptions{})
		dead := refusedAddr(t)
		resp, err := l.httpClient(t, nil, false).Get("http://" + dead + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 502 || !strings.Contains(string(body), "refused") {
			t.Fatalf("got %d %q, want 502 saying the connection was refused", resp.StatusCode, body)
		}
		// CONNECT too.
		_, err = l.httpClient(t, nil, false).Get("https://" + dead + "/")
		if err == nil || !strings.Contains(err.Error(), "Bad Gateway") {
			t.Fatalf("CONNECT to a dead target: %v, want Bad Gateway", err)
		}
	})
	t.Run("loopback target is 403 by default", func(t *testing.T) {
		l := startLab(t, labOptions{targets: &coordinator.TargetPolicy{}})
		target := startTarget(t, "127.0.0.1", bulkHandler())
		resp, err := l.httpClient(t, nil, false).Get(target.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || !strings.Contains(string(body), "loopback") || !strings.Contains(string(body), "--allow-private-targets") {
			t.Fatalf("got %d %q, want 403 saying loopback is refused and how to allow it", resp.StatusCode, body)
		}
		// CONNECT too.
		_, err = l.httpClient(t, nil, false).Get("https://" + target.Listener.Addr().String() + "/")
		if err == nil || !strings.Contains(err.Error(), "Forbidden") {
			t.Fatalf("CONNECT to a loopback target: %v, want Forbidden", err)
		}
		if st := l.coord.Server().Stats(); st.TargetsForbidden != 2 || st.Sessions != 0 || st.TargetErrors != 0 {
			t.Fatalf("coordinator stats %+v, want 2 forbidden and no session", st)
		}
		if log := l.coordLog.String(); !strings.Contains(log, "outcome=forbidden") {
			t.Fatalf("access log lacks outcome=forbidden:\n%s", log)
		}
	})
	t.Run("coordinator down is 503", func(t *testing.T) {
		l := startLab(t, labOptions{})
		target := startTarget(t, "127.0.0.1", bulkHandler())
		l.stopCoord()
		waitFor(t, "localproxy to notice", func() bool { return !l.proxy.Client().Stats().Connected })
		resp, err := l.httpClient(t, nil, false).Get(target.URL + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || !strings.Contains(string(body), "coordinator") {
			t.Fatalf("got %d %q, want 503 naming coordinator", resp.StatusCode, body)
		}
		// The access log records the status the browser got.
		line := accessLine(t, l.proxyLog, target.URL+"/")
		if !strings.Contains(line, " status=503 ") {
			t.Fatalf("access log line %q, want status=503", line)
		}
	})
	t.Run("wrong token is refused and logged", func(t *testing.T) {
		l := startLab(t, labOptions{clientToken: "not-the-token"})
		select {
		case err := <-l.proxyErr:
			if err == nil || !strings.Contains(err.Error(), "refused the token") {
				t.Fatalf("localproxy ended with %v, want a refused-token error", err)
			}
			l.proxyErr <- err
		case <-t.Context().Done():
			t.Fatal("localproxy kept running with a wrong token")
		}
		if log := l.coordLog.String(); !strings.Contains(log, "invalid token") {
			t.Fatalf("coordinator did not log the refusal:\n%s", log)
		}
		if st := l.coord.Server().Stats(); st.AuthFailures != 1 || st.Sessions != 0 {
			t.Fatalf("coordinator stats %+v", st)
		}
	})
	t.Run("malformed request is 400", func(t *testing.T) {
		l := startLab(t, labOptions{})
		conn, err := net.Dial("tcp", l.proxyURL.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "NOT A REQUEST\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("status %d, want 400", resp.StatusCode)
		}
	})
}

// accessLine returns the access-log line in log for target.
// The proxy writes the line once the response is sent: the browser may
// have it first.
func accessLine(t *testing.T, log *logBuffer, target string) string {
	t.Helper()
	var found string
	waitFor(t, "the access-log line for "+target, func() bool {
		for line := range strings.Lines(log.String()) {
			if strings.Contains(line, "msg=request ") && strings.Contains(line, " target="+target+" ") {
				found = strings.TrimSpace(line)
				return true
			}
		}
		return false
	})
	return found
}

func TestReconnectAfterCoordinatorRestart(t *testing.T) {
	l := startLab(t, labOptions{})
	target := startTarget(t, "127.0.0.1", bulkHandler())
	get := func() (int, error) {
		tr := &http.Transport{Proxy: http.ProxyURL(l.proxyURL), DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(target.URL + "/")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := get(); code != 200 {
		t.Fatalf("before restart: %d %v", code, err)
	}
	addr := l.coord.Addr().String()
	l.stopCoord()
	l.startCoordinator(t, addr)
	waitFor(t, "reconnect", func() bool { code, _ := get(); return code == 200 })
}

func TestPACFile(t *testing.T) {
	l := startLab(t, labOptions{})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(l.proxyURL.String() + "/proxy.pac")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "PROXY "+l.proxyURL.Host) ||
		resp.Header.Get("Content-Type") != "application/x-ns-proxy-autoconfig" {
		t.Fatalf("PAC: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	// *.localhost (RFC 6761) is loopback: direct, like localhost.
	if !strings.Contains(string(body), `dnsDomainIs(host, ".localhost")`) {
		t.Fatalf("PAC does not send *.localhost direct:\n%s", body)
	}
}

// TestLocalhostNamesStayLocal checks that localproxy reaches localhost
// and *.localhost targets (RFC 6761) on this computer's loopback itself,
// for absolute-form requests and CONNECT, instead of sending them to
// coordinator (whose loopback is not the user's, and which refuses it).
func TestLocalhostNamesStayLocal(t *testing.T) {
	l := startLab(t, labOptions{targets: &coordinator.TargetPolicy{}}) // coordinator refuses loopback
	app := startTarget(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "local app, Host %s", r.Host)
	}))
	port := app.Listener.Addr().(*net.TCPAddr).Port
	client := l.httpClient(t, nil, false)
	for _, host := range []string{"app.localhost", "localhost", "Deep.App.LOCALHOST."} {
		u := fmt.Sprintf("http://%s:%d/", host, port)
		resp, err := client.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("local app, Host %s:%d", host, port); resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("GET %s: %d %q, want 200 %q", u, resp.StatusCode, body, want)
		}
	}
	// CONNECT, then a request through the tunnel.
	c, err := net.Dial("tcp", l.proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "CONNECT app.localhost:%d HTTP/1.1\r\nHost: app.localhost:%d\r\n\r\n", port, port)
	if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT app.localhost: %v %v", resp, err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "local app, Host app.localhost" {
		t.Fatalf("through CONNECT: %d %q", resp.StatusCode, body)
	}
	c.Close() // the tunnel ends: the inspector lists it (below)
	// An app listening on ::1 only is found too.
	app6 := startTarget(t, "::1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "v6") }))
	u := fmt.Sprintf("http://v6.localhost:%d/", app6.Listener.Addr().(*net.TCPAddr).Port)
	resp, err = client.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "v6" {
		t.Fatalf("GET %s: %d %q", u, resp.StatusCode, body)
	}
	if st := l.coord.Server().Stats(); st.Sessions != 0 || st.TargetsForbidden != 0 {
		t.Fatalf("coordinator stats %+v: a localhost target went through the tunnel", st)
	}
	// The inspector lists them, absolute-form and CONNECT, as direct.
	var list []struct {
		Method, Host, Transport string
		Status                  int
		Down                    int64 `json:"bytes_down"`
	}
	want := map[string]bool{"GET app.localhost:" + strconv.Itoa(port): false, "CONNECT app.localhost:" + strconv.Itoa(port): false}
	waitFor(t, "the localhost requests in the inspector", func() bool {
		resp, err := http.Get("http://" + l.proxyURL.Host + "/ui/api/requests")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
			return false
		}
		for _, r := range list {
			if _, ok := want[r.Method+" "+r.Host]; ok && r.Transport == "direct" && r.Status == 200 && r.Down > 0 {
				want[r.Method+" "+r.Host] = true
			}
		}
		return !slices.Contains(slices.Collect(maps.Values(want)), false)
	})
}

// TestFastOpen: with fast open, plain requests, TLS through CONNECT and
// errors all work; sessions skip the dial-back, and a request to a target
// coordinator cannot reach still gets its 502 (a CONNECT, answered before
// the target was tried, is closed instead).
func TestFastOpen(t *testing.T) {
	l := startLab(t, labOptions{fastOpen: true})
	target := startTarget(t, "127.0.0.1", bulkHandler())
	client := l.httpClient(t, nil, false)
	const size = 8 << 20
	resp, err := client.Get(target.URL + "/bytes?n=" + strconv.Itoa(size))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || n != size || hex.EncodeToString(h.Sum(nil)) != patternSHA(size) {
		t.Fatalf("download: %d bytes, %v, or wrong bytes", n, err)
	}

	tlsTarget := httptest.NewTLSServer(bulkHandler())
	defer tlsTarget.Close()
	roots := x509.NewCertPool()
	roots.AddCert(tlsTarget.Certificate())
	resp, err = l.httpClient(t, roots, false).Post(tlsTarget.URL+"/up", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatalf("POST through CONNECT: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("POST 5 %x", sha256.Sum256([]byte("hello"))); string(body) != want {
		t.Fatalf("answer %q, want %q", body, want)
	}

	dead := refusedAddr(t)
	resp, err = client.Get("http://" + dead + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(body), "refused") {
		t.Fatalf("got %d %q, want 502 saying the connection was refused", resp.StatusCode, body)
	}
	if _, err := l.httpClient(t, nil, false).Get("https://" + dead + "/"); err == nil {
		t.Fatal("CONNECT to a dead target succeeded")
	}

	st := l.coord.Server().Stats()
	if st.FastOpenSessions < 2 || st.DialBackSessions != 0 || st.DialBackDials != 0 {
		t.Fatalf("coordinator stats %+v: want fast-open sessions only, no dial-back", st)
	}
	client.CloseIdleConnections()
	waitFor(t, "access log lines", func() bool {
		return strings.Contains(l.coordLog.String(), "(fast-open)") &&
			strings.Contains(l.proxyLog.String(), "method=CONNECT target="+dead+" status=200") &&
			strings.Contains(l.proxyLog.String(), "target unreachable")
	})
}
