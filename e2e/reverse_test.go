package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"quictunnel/internal/coordinator"
	"quictunnel/internal/demoapp"
	"quictunnel/internal/localproxy"
	"quictunnel/quictun"
)

// reverseLab is a coordinator with a public HTTP port and a port range,
// and the localproxies exposing apps through it.
type reverseLab struct {
	coord    *coordinator.Coordinator
	coordLog *logBuffer
	// clientLogs holds each client's log, by name (addClient).
	clientLogs map[string]*logBuffer
	// logPublicRequests names the clients addClient starts with
	// LogPublicRequests.
	logPublicRequests map[string]bool
	stop              func()
	httpAddr          string
	quicAddr          string
	ports             coordinator.PortRange
	// tweaks change the coordinator's configuration (startReverseLab).
	tweaks []func(*coordinator.Config)
}

// startReverseLab starts the coordinator, its configuration changed by
// tweaks, if any.
func startReverseLab(t *testing.T, tweaks ...func(*coordinator.Config)) *reverseLab {
	t.Helper()
	// Public ports come from below the kernel's ephemeral range (32768 and
	// up here), so no outgoing connection of the tests can hold them.
	base := 20000 + rand.IntN(500)*20
	l := &reverseLab{coordLog: &logBuffer{}, ports: coordinator.PortRange{Min: uint16(base), Max: uint16(base + 19)}, tweaks: tweaks}
	l.start(t, "127.0.0.1:0", "127.0.0.1:0")
	t.Cleanup(func() {
		l.stop()
		if t.Failed() {
			t.Logf("coordinator log:\n%s", l.coordLog)
		}
	})
	return l
}

func (l *reverseLab) start(t *testing.T, quicAddr, httpAddr string) {
	t.Helper()
	cert, _ := loadCoordinatorCert(t)
	cfg := coordinator.Config{
		Listen: quicAddr, Certificate: cert, Token: "rev-token", ReporterListen: "127.0.0.1:0",
		HTTPListen: httpAddr, Domain: "localhost", PortRange: l.ports, PublicBind: "127.0.0.1",
		Logger: l.coordLog.logger(),
	}
	for _, tweak := range l.tweaks {
		tweak(&cfg)
	}
	c, err := coordinator.New(cfg)
	if err != nil {
		t.Fatalf("coordinator: %v", err)
	}
	l.coord, l.httpAddr, l.quicAddr = c, c.HTTPAddr().String(), c.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	l.stop = func() { once.Do(func() { cancel(); <-done }) }
}

// addClient starts a localproxy exposing services; it waits until they
// are registered (successfully or not) and returns it.
func (l *reverseLab) addClient(t *testing.T, name string, services ...quictun.ExposedService) *localproxy.Proxy {
	t.Helper()
	_, pool := loadCoordinatorCert(t)
	log := &logBuffer{}
	if l.clientLogs == nil {
		l.clientLogs = map[string]*logBuffer{}
	}
	l.clientLogs[name] = log
	p, err := localproxy.New(localproxy.Config{
		Listen: "127.0.0.1:0", UDPListen: "127.0.0.1:0", Coordinator: l.quicAddr, Reporter: l.coord.ReporterAddr().String(),
		Token: "rev-token", RootCAs: pool, ServerName: "localhost", Name: name, Services: services, LogPublicRequests: l.logPublicRequests[name],
		ConnectTimeout: 2 * time.Second, Logger: log.logger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("%s log:\n%s", name, log)
		}
	})
	waitFor(t, name+" registrations", func() bool { return len(p.Client().Registrations()) == len(services) })
	return p
}

// publicClient sends requests to the coordinator's public HTTP port with
// the Host header of an exposed name.
func (l *reverseLab) get(t *testing.T, client *http.Client, method, name, path string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+l.httpAddr+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = name + ".localhost"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, name, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s%s: %v", name, path, err)
	}
	return resp, b
}

func startApp(t *testing.T) string {
	return startTarget(t, "127.0.0.1", demoapp.Handler()).Listener.Addr().String()
}

func TestReverseTunnel(t *testing.T) {
	l := startReverseLab(t)
	l.logPublicRequests = map[string]bool{"laptop-a": true}
	raw := newRawTarget(t, "127.0.0.1")
	echoTCP := startTCPEcho(t)
	refused := refusedAddr(t)
	a := l.addClient(t, "laptop-a",
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app", Local: startApp(t)},
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "raw", Local: raw.addr()},
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "devserver", Local: raw.addr(), HostHeader: raw.addr()},
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "private", Local: raw.addr(), BasicAuth: quictun.HashCredentials("alice", "s3cret")},
	)
	b := l.addClient(t, "laptop-b",
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "api", Local: startApp(t)},
		quictun.ExposedService{Kind: quictun.ServiceTCP, Name: "echo", Local: echoTCP},
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "down", Local: refused},
		quictun.ExposedService{Kind: quictun.ServiceTCP, Name: "tcpdown", Local: refused},
		// Open only to a network the tests are not on, and to loopback.
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "office", Local: startApp(t), AllowFrom: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
		quictun.ExposedService{Kind: quictun.ServiceTCP, Name: "officetcp", Local: echoTCP, AllowFrom: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "loopback", Local: startApp(t), AllowFrom: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
	)
	for _, p := range []*localproxy.Proxy{a, b} {
		for _, r := range p.Client().Registrations() {
			if r.Err != nil {
				t.Fatalf("registration of %s: %v", r.Service.Name, r.Err)
			}
		}
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}

	t.Run("methods and bodies", func(t *testing.T) {
		const size = 64 << 20
		for _, name := range []string{"app", "api"} {
			resp, body := l.get(t, client, "POST", name, "/upload?x=1", &patternReader{n: size})
			var e demoapp.Echo
			if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != 200 {
				t.Fatalf("%s: %d %s", name, resp.StatusCode, body)
			}
			if e.Method != "POST" || e.Path != "/upload" || e.Query != "x=1" || e.BodyLength != size || e.BodySHA256 != patternSHA(size) {
				t.Fatalf("%s echo: %+v", name, e)
			}
			if got := e.Header["X-Forwarded-For"]; len(got) != 1 || got[0] != "127.0.0.1" {
				t.Errorf("X-Forwarded-For = %v", got)
			}
			if e.Header["X-Forwarded-Proto"][0] != "http" || e.Header["X-Forwarded-Host"][0] != name+".localhost" ||
				!strings.Contains(e.Header["Forwarded"][0], "for=127.0.0.1") {
				t.Errorf("forwarding headers %v", e.Header)
			}
		}
		for _, m := range []string{"GET", "PUT", "DELETE", "PATCH"} {
			resp, body := l.get(t, client, m, "app", "/m", strings.NewReader("data"))
			var e demoapp.Echo
			json.Unmarshal(body, &e)
			if resp.StatusCode != 200 || e.Method != m {
				t.Errorf("%s: %d %+v", m, resp.StatusCode, e)
			}
		}
		resp, body := l.get(t, client, "GET", "app", "/bytes?n="+strconv.Itoa(size), nil)
		if sum := sha256.Sum256(body); resp.StatusCode != 200 || hex.EncodeToString(sum[:]) != patternSHA(size) {
			t.Fatalf("download: %d, %d bytes", resp.StatusCode, len(body))
		}
	})

	// appReceives sends a raw request to the public port and checks the
	// first header lines the app behind raw received.
	appReceives := func(t *testing.T, request string, want ...string) {
		t.Helper()
		c, err := net.Dial("tcp", l.httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, request)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		lines := headerLines(raw.lastHead())
		if len(lines) < len(want) || strings.Join(lines[:len(want)], "\n") != strings.Join(want, "\n") {
			t.Errorf("app received:\n%s\nwant first:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
		}
	}

	t.Run("headers unchanged", func(t *testing.T) {
		appReceives(t, "GET /h?q=1 HTTP/1.1\r\nHost: raw.localhost\r\nX-Custom-CASE: MiXeD\r\nx-rep: 1\r\nAccept: */*\r\nx-rep: 2\r\n\r\n",
			"Host: raw.localhost", "X-Custom-CASE: MiXeD", "x-rep: 1", "Accept: */*", "x-rep: 2",
			"X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: http", "X-Forwarded-Host: raw.localhost")
	})

	t.Run("Host header rewritten", func(t *testing.T) {
		// localproxy --host-header devserver=rewrite: the app gets its own
		// address as Host (dev servers refuse other names); the public
		// name stays in X-Forwarded-Host.
		appReceives(t, "GET /dev HTTP/1.1\r\nHost: devserver.localhost\r\nX-Custom: 1\r\n\r\n",
			"X-Custom: 1", "Host: "+raw.addr(), "X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: http",
			"X-Forwarded-Host: devserver.localhost")
	})

	t.Run("every public request in the log of a client that asks for it", func(t *testing.T) {
		// Three requests on one keep-alive connection: one reverse
		// session, three lines at the client that exposes the app, each
		// with what coordinator's access line has.
		for i, path := range []string{"/logged/1?a=b", "/logged/2", "/missing-is-still-200"} {
			method := []string{"GET", "POST", "DELETE"}[i]
			resp, _ := l.get(t, client, method, "app", path, strings.NewReader("seven b"))
			if resp.StatusCode != 200 {
				t.Fatalf("%s %s: %d", method, path, resp.StatusCode)
			}
			line := `msg="public request" service=app remote=127.0.0.1:`
			want := regexp.MustCompile(regexp.QuoteMeta(line) + `\d+ method=` + method + ` target="?` + regexp.QuoteMeta("app.localhost"+path) + `"?` +
				` status=200 bytes_up=7 bytes_down=\d+ duration=\S+ session=[0-9a-f]{32} outcome=ok`)
			waitFor(t, "the client's line for "+path, func() bool { return want.MatchString(l.clientLogs["laptop-a"].String()) })
		}
		// laptop-b did not ask for the log: its app's requests are in
		// coordinator's log only.
		if resp, _ := l.get(t, client, "GET", "api", "/not-logged", nil); resp.StatusCode != 200 {
			t.Fatalf("api: %d", resp.StatusCode)
		}
		waitFor(t, "coordinator's line", func() bool { return strings.Contains(l.coordLog.String(), "api.localhost/not-logged") })
		if logs := l.clientLogs["laptop-b"].String(); strings.Contains(logs, "public request") || strings.Contains(logs, "/logged/") {
			t.Error("a client that did not ask for the request log logged public requests")
		}
	})

	t.Run("basic auth", func(t *testing.T) {
		// localproxy --basic-auth private=alice:s3cret: coordinator asks
		// the public, and only a request with the right credentials
		// reaches the app, without them.
		ask := func(auth string) (*http.Response, string) {
			t.Helper()
			before := raw.lastHead()
			req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+l.httpAddr+"/secret", nil)
			req.Host = "private.localhost"
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			head := raw.lastHead()
			if head == before {
				head = ""
			}
			return resp, head
		}
		for _, auth := range []string{"", "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:wrong")), "Bearer x"} {
			resp, head := ask(auth)
			if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Basic realm="private.localhost", charset="UTF-8"` {
				t.Errorf("Authorization %q: %d %v, want 401 with a Basic challenge", auth, resp.StatusCode, resp.Header)
			}
			if head != "" {
				t.Errorf("Authorization %q reached the app:\n%s", auth, head)
			}
		}
		resp, head := ask("Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret")))
		if resp.StatusCode != 200 || !strings.Contains(head, "GET /secret") {
			t.Fatalf("right credentials: %d, app saw %q", resp.StatusCode, head)
		}
		if strings.Contains(strings.ToLower(head), "authorization") {
			t.Errorf("the app received the tunnel's credentials:\n%s", head)
		}
		waitFor(t, "the 401 in the access log", func() bool {
			return strings.Contains(l.coordLog.String(), `target=private.localhost/secret status=401`)
		})
	})

	t.Run("allow-from", func(t *testing.T) {
		// localproxy --allow-from: coordinator refuses public clients from
		// elsewhere before anything reaches the tunnel.
		if resp, body := l.get(t, client, "GET", "office", "/", nil); resp.StatusCode != 403 || !strings.Contains(string(body), "127.0.0.1") {
			t.Errorf("office from loopback: %d %s, want 403 naming the address", resp.StatusCode, body)
		}
		if resp, _ := l.get(t, client, "GET", "loopback", "/", nil); resp.StatusCode != 200 {
			t.Errorf("loopback-only app from loopback: %d, want 200", resp.StatusCode)
		}
		var port uint16
		for _, r := range b.Client().Registrations() {
			if r.Service.Name == "officetcp" {
				port = r.Port
			}
		}
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
		if err == nil {
			defer c.Close()
			io.WriteString(c, "hello?")
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if got, err := io.ReadAll(c); len(got) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("TCP service from loopback: read %q, %v; want the connection refused without bytes", got, err)
			}
		}
		waitFor(t, "the refusal in the access log", func() bool {
			return strings.Contains(l.coordLog.String(), "service=officetcp") && strings.Contains(l.coordLog.String(), "outcome=forbidden")
		})
	})

	t.Run("websocket", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "ws://"+l.httpAddr+"/ws", &websocket.DialOptions{Host: "app.localhost"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		for i := range 5 {
			msg := fmt.Sprintf("frame %d", i)
			c.Write(ctx, websocket.MessageText, []byte(msg))
			if _, got, err := c.Read(ctx); err != nil || string(got) != msg {
				t.Fatalf("echo %q %v", got, err)
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	})

	t.Run("server-sent events are flushed as they come", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+l.httpAddr+"/sse?n=4&interval=300ms", nil)
		req.Host = "api.localhost"
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var firstAt time.Duration
		events := 0
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data: ") {
				if events == 0 {
					firstAt = time.Since(start)
				}
				events++
			}
		}
		total := time.Since(start)
		if events != 4 || firstAt > total-500*time.Millisecond {
			t.Fatalf("%d events; first after %v of %v: not streamed", events, firstAt, total)
		}
	})

	t.Run("raw TCP with half-close", func(t *testing.T) {
		var port uint16
		for _, r := range b.Client().Registrations() {
			if r.Service.Name == "echo" {
				port = r.Port
			}
		}
		if port < l.ports.Min || port > l.ports.Max {
			t.Fatalf("assigned port %d outside %d-%d", port, l.ports.Min, l.ports.Max)
		}
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		payload := strings.Repeat("tcp bytes ", 100000)
		go func() {
			io.WriteString(c, payload)
			c.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != payload {
			t.Fatalf("echo: %d bytes, %v", len(got), err)
		}
	})

	t.Run("raw TCP to an app that is down", func(t *testing.T) {
		// The client's bytes go out before the answer (DialEarly); the
		// answer ends the connection and the access log says why.
		var port uint16
		for _, r := range b.Client().Registrations() {
			if r.Service.Name == "tcpdown" {
				port = r.Port
			}
		}
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			// Reset before our connect even returned: the answer was that fast.
		case err != nil:
			t.Fatal(err)
		default:
			defer c.Close()
			io.WriteString(c, "hello?")
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if got, err := io.ReadAll(c); len(got) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read %q, %v; want the connection ended without bytes", got, err)
			}
		}
		waitFor(t, "the access-log line", func() bool {
			return strings.Contains(l.coordLog.String(), "service=tcpdown") &&
				strings.Contains(l.coordLog.String(), "outcome=unavailable")
		})
	})

	t.Run("errors", func(t *testing.T) {
		resp, body := l.get(t, client, "GET", "nosuchname", "/", nil)
		if resp.StatusCode != 404 {
			t.Errorf("unknown name: %d %s", resp.StatusCode, body)
		}
		resp, body = l.get(t, client, "GET", "down", "/", nil)
		if resp.StatusCode != 502 || !strings.Contains(string(body), "refused") {
			t.Errorf("app refusing connections: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("name collision", func(t *testing.T) {
		c := l.addClient(t, "laptop-c", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app", Local: raw.addr()})
		var se *quictun.SessionError
		if r := c.Client().Registrations()[0]; !errors.As(r.Err, &se) || se.Code != quictun.CodeNameTaken {
			t.Fatalf("second client asking for app: %+v", r)
		}
		resp, _ := l.get(t, client, "GET", "app", "/", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("app after a refused collision: %d", resp.StatusCode)
		}
	})

	t.Run("500 concurrent requests across both clients", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 500)
		ctr := &http.Transport{MaxIdleConnsPerHost: 64}
		defer ctr.CloseIdleConnections()
		cc := &http.Client{Transport: ctr, Timeout: 60 * time.Second}
		for i := range 500 {
			name := []string{"app", "api"}[i%2]
			wg.Go(func() {
				req, _ := http.NewRequestWithContext(t.Context(), "POST", fmt.Sprintf("http://%s/c/%d", l.httpAddr, i), strings.NewReader(strconv.Itoa(i)))
				req.Host = name + ".localhost"
				resp, err := cc.Do(req)
				if err != nil {
					errs <- err
					return
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				var e demoapp.Echo
				if err == nil {
					err = json.Unmarshal(body, &e)
				}
				if err != nil || e.Path != fmt.Sprintf("/c/%d", i) || e.BodyLength != int64(len(strconv.Itoa(i))) {
					errs <- fmt.Errorf("request %d: status %d, body %.200q: %v", i, resp.StatusCode, body, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func TestReverseCoordinatorRestart(t *testing.T) {
	l := startReverseLab(t)
	l.addClient(t, "laptop", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app", Local: startApp(t)})
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if resp, _ := l.get(t, client, "GET", "app", "/", nil); resp.StatusCode != 200 {
		t.Fatalf("before restart: %d", resp.StatusCode)
	}
	quic, httpAddr := l.quicAddr, l.httpAddr
	l.stop()
	l.start(t, quic, httpAddr)
	waitFor(t, "app reachable after coordinator restart", func() bool {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+l.httpAddr+"/", nil)
		req.Host = "app.localhost"
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// TestReverseClientKilled kills a localproxy process (no goodbye) and
// expects the next public request to get 502 within about a second.
func TestReverseClientKilled(t *testing.T) {
	l := startReverseLab(t)
	certs, _ := filepath.Abs(certsDir())
	app := startApp(t)
	lp := start(t, nil, "localproxy", "--listen", "127.0.0.1:0", "--coordinator", l.quicAddr,
		"--reporter", l.coord.ReporterAddr().String(), "--token", "rev-token", "--ca", filepath.Join(certs, "ca.pem"),
		"--server-name", "localhost", "--expose", "app="+app)
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	waitFor(t, "app published", func() bool {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+l.httpAddr+"/", nil)
		req.Host = "app.localhost"
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if !strings.Contains(lp.out.String(), "service published") {
		t.Errorf("localproxy did not print the public URL:\n%s", lp.out)
	}
	lp.kill()
	start := time.Now()
	resp, body := l.get(t, client, "GET", "app", "/", nil)
	// Noticed by the missing ReverseAck (1.5 s), not by the 30 s idle timeout.
	if took := time.Since(start); resp.StatusCode != 502 || took > 10*time.Second {
		t.Fatalf("after kill: %d %q after %v; want 502 within a couple of seconds", resp.StatusCode, body, took)
	}
	// Later requests are refused at once: the name is known to be offline.
	start = time.Now()
	resp, _ = l.get(t, client, "GET", "app", "/", nil)
	if took := time.Since(start); resp.StatusCode != 502 || took > 500*time.Millisecond {
		t.Fatalf("second request after kill: %d after %v", resp.StatusCode, took)
	}
}

// startTCPEcho is a TCP echo server that half-closes when its client does.
func startTCPEcho(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	return ln.Addr().String()
}

// TestReverseDedicatedHTTPPort: an HTTP service that asked for a public
// port of its own answers there as well as by name.
func TestReverseDedicatedHTTPPort(t *testing.T) {
	l := startReverseLab(t)
	want := freePortIn(t, l.ports)
	p := l.addClient(t, "laptop", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "web", Local: startApp(t), Port: want})
	r := p.Client().Registrations()[0]
	if r.Err != nil || r.Port != want || !strings.Contains(r.URL, strconv.Itoa(int(want))) {
		t.Fatalf("registration %+v, want port %d", r, want)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(fmt.Sprintf("http://127.0.0.1:%d/dedicated", want))
	if err != nil {
		t.Fatal(err)
	}
	var e demoapp.Echo
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != 200 || e.Path != "/dedicated" || e.Header.Get("X-Forwarded-For") == "" {
		t.Fatalf("dedicated port: %d %+v", resp.StatusCode, e)
	}
}

// freePortIn returns a port of r nothing listens on right now.
func freePortIn(t *testing.T, r coordinator.PortRange) uint16 {
	for p := r.Max; p >= r.Min; p-- {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p))))
		if err == nil {
			ln.Close()
			return p
		}
	}
	t.Fatalf("no free port in %d-%d", r.Min, r.Max)
	return 0
}

// TestReverseForwardingFields checks that the Forwarded, X-Forwarded-* and
// X-Real-IP fields a public client forges never reach the app, on the
// shared port and a dedicated one, while those of a trusted proxy
// (127.0.0.2 here) are kept and extended.
func TestReverseForwardingFields(t *testing.T) {
	l := startReverseLab(t, func(c *coordinator.Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	})
	raw := newRawTarget(t, "127.0.0.1")
	port := freePortIn(t, l.ports)
	l.addClient(t, "laptop",
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "raw", Local: raw.addr()},
		quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "rawport", Local: raw.addr(), Port: port})
	const forged = "Forwarded: for=203.0.113.7\r\nX-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"
	dedicated := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	tests := []struct {
		name, from, to string
		want           []string
	}{
		{"stranger", "127.0.0.1", l.httpAddr, []string{"X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: http",
			"X-Forwarded-Host: raw.localhost", "X-Real-IP: 127.0.0.1", `Forwarded: for=127.0.0.1;host="raw.localhost";proto=http`}},
		{"stranger on a dedicated port", "127.0.0.1", dedicated, []string{"X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: http",
			"X-Forwarded-Host: raw.localhost", "X-Real-IP: 127.0.0.1", `Forwarded: for=127.0.0.1;host="raw.localhost";proto=http`}},
		{"trusted proxy", "127.0.0.2", l.httpAddr, []string{"X-Forwarded-For: 203.0.113.7, 127.0.0.2", "X-Forwarded-Proto: https",
			"X-Forwarded-Host: raw.localhost", "X-Real-IP: 203.0.113.7", `Forwarded: for=203.0.113.7, for=127.0.0.2;host="raw.localhost";proto=http`}},
		{"trusted proxy on a dedicated port", "127.0.0.2", dedicated, []string{"X-Forwarded-For: 203.0.113.7, 127.0.0.2", "X-Forwarded-Proto: https",
			"X-Forwarded-Host: raw.localhost", "X-Real-IP: 203.0.113.7", `Forwarded: for=203.0.113.7, for=127.0.0.2;host="raw.localhost";proto=http`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tt.from)}, Timeout: 10 * time.Second}
			c, err := d.DialContext(t.Context(), "tcp", tt.to)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, "GET /f HTTP/1.1\r\nHost: raw.localhost\r\n"+forged+"X-Other: 1\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("response %v, %v", resp, err)
			}
			resp.Body.Close()
			want := append([]string{"Host: raw.localhost", "X-Other: 1"}, tt.want...)
			if got := headerLines(raw.lastHead()); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("app received:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}
