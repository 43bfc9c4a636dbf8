package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/quictun"
)

// The fault-injection tests run the real binaries on loopback (the NAT
// lab ones are in faults_natlab_test.go). Every target they dial is on
// 127.0.0.1.

// binLab is coordinator and localproxy as real processes on loopback, each
// with its metrics endpoint.
type binLab struct {
	certs                      string
	quicPort, proxyPort        int
	httpPort                   int // coordinator's public HTTP port, 0 without
	coordMetrics, proxyMetrics int
	expose                     []string
	coord, proxy               *process
}

// binLabOptions selects what a binLab runs.
type binLabOptions struct {
	publicHTTP bool     // give coordinator a public HTTP port (--http)
	expose     []string // localproxy --expose values
	proxyArgs  []string // more localproxy flags
}

const binToken = "faults-token"

// startBinLab starts coordinator and localproxy and waits until localproxy
// is connected (and its exposed apps are published).
func startBinLab(t *testing.T, o binLabOptions) *binLab {
	t.Helper()
	certs, err := filepath.Abs(certsDir())
	if err != nil {
		t.Fatal(err)
	}
	b := &binLab{certs: certs, quicPort: freeUDPPort(t), proxyPort: freeTCPPort(t),
		coordMetrics: freeTCPPort(t), proxyMetrics: freeTCPPort(t), expose: o.expose}
	if o.publicHTTP {
		b.httpPort = freeTCPPort(t)
	}
	b.startCoordinator(t)
	args := []string{"--listen", loop(b.proxyPort), "--coordinator", loop(b.quicPort), "--token", binToken,
		"--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost", "--metrics-listen", loop(b.proxyMetrics)}
	for _, e := range o.expose {
		args = append(args, "--expose", e)
	}
	args = append(args, o.proxyArgs...)
	b.proxy = start(t, nil, "localproxy", args...)
	waitFor(t, "localproxy connected", func() bool {
		v, err := metric(b.proxyMetrics, "quictunnel_coordinator_connected")
		return err == nil && v == 1
	})
	if len(o.expose) > 0 {
		waitFor(t, "apps published", func() bool {
			v, err := metric(b.coordMetrics, "quictunnel_exposed_services")
			return err == nil && int(v) == len(o.expose)
		})
	}
	return b
}

// startCoordinator starts (or, after a kill, restarts) coordinator on the
// lab's ports.
func (b *binLab) startCoordinator(t *testing.T) {
	t.Helper()
	args := []string{"--listen", loop(b.quicPort), "--token", binToken,
		"--cert", filepath.Join(b.certs, "coordinator.pem"), "--key", filepath.Join(b.certs, "coordinator-key.pem"),
		"--metrics-listen", loop(b.coordMetrics), "--allow-private-targets"} // the targets are on loopback
	if b.httpPort != 0 {
		args = append(args, "--http", loop(b.httpPort), "--domain", "localhost")
	}
	b.coord = start(t, nil, "coordinator", args...)
	waitFor(t, "coordinator metrics", func() bool { _, err := metric(b.coordMetrics, "quictunnel_clients_connected"); return err == nil })
}

// proxyTransport returns a transport through localproxy, one connection
// per request.
func (b *binLab) proxyTransport(t *testing.T) *http.Transport {
	proxyURL := &url.URL{Scheme: "http", Host: loop(b.proxyPort)}
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// publicGet sends GET path for name.localhost to coordinator's public port.
func (b *binLab) publicGet(ctx context.Context, client *http.Client, name, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+loop(b.httpPort)+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = name + ".localhost"
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func loop(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// metric reads one unlabelled sample from the /metrics page on port.
func metric(port int, name string) (float64, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + loop(port) + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return parseMetric(resp.Body, name)
}

// parseMetric finds the sample "name value" in a Prometheus text page.
func parseMetric(r io.Reader, name string) (float64, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// connectTunnel opens a CONNECT tunnel to target through the proxy at
// proxyAddr and returns the connection, ready for the target's bytes.
func connectTunnel(ctx context.Context, proxyAddr, target string) (net.Conn, *bufio.Reader, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("CONNECT %s: %w", target, err)
	}
	if resp.StatusCode != 200 {
		c.Close()
		return nil, nil, fmt.Errorf("CONNECT %s: %s", target, resp.Status)
	}
	return c, br, nil
}

// TestCoordinatorKilledMidTransfer kills coordinator (SIGKILL) while a
// large download runs through localproxy, and restarts it at once or
// later: the client must get an error (not a short body taken for a whole
// one, not a hang) within 5 s, and once coordinator is back the next
// request must work, within a second when it restarted at once.
func TestCoordinatorKilledMidTransfer(t *testing.T) {
	t.Parallel()
	target := startTarget(t, "127.0.0.1", bulkHandler())
	const size = 1 << 30 // far more than can be in flight when coordinator dies
	bytesURL := fmt.Sprintf("%s/bytes?n=%d", target.URL, size)
	// errorBound is how long the client may wait for the error: localproxy
	// closes the dial-back connections of a coordinator whose control
	// connection ended (a restarted one resets it) or that stopped
	// answering (quictun/watch.go), not only at QUIC's 30 s idle timeout.
	const errorBound = 5 * time.Second
	tests := []struct {
		name     string
		download func(ctx context.Context, b *binLab) (io.ReadCloser, error)
	}{
		{"absolute-form", func(ctx context.Context, b *binLab) (io.ReadCloser, error) {
			req, _ := http.NewRequestWithContext(ctx, "GET", bytesURL, nil)
			resp, err := (&http.Client{Transport: b.proxyTransport(t)}).Do(req)
			if err != nil {
				return nil, err
			}
			if resp.StatusCode != 200 || resp.ContentLength != size {
				resp.Body.Close()
				return nil, fmt.Errorf("status %d, length %d", resp.StatusCode, resp.ContentLength)
			}
			return resp.Body, nil
		}},
		{"CONNECT", func(ctx context.Context, b *binLab) (io.ReadCloser, error) {
			host := strings.TrimPrefix(target.URL, "http://")
			c, br, err := connectTunnel(ctx, loop(b.proxyPort), host)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(c, "GET /bytes?n=%d HTTP/1.1\r\nHost: %s\r\n\r\n", size, host)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				c.Close()
				return nil, err
			}
			if resp.StatusCode != 200 || resp.ContentLength != size {
				c.Close()
				return nil, fmt.Errorf("status %d, length %d", resp.StatusCode, resp.ContentLength)
			}
			return struct {
				io.Reader
				io.Closer
			}{resp.Body, c}, nil
		}},
	}
	for _, tt := range tests {
		for _, restart := range []bool{false, true} {
			name := tt.name
			if restart {
				name += "/restarted at once"
			}
			t.Run(name, func(t *testing.T) { coordinatorKilledMidTransfer(t, target.URL, tt.download, restart, errorBound) })
		}
	}
}

// coordinatorKilledMidTransfer is one case of
// TestCoordinatorKilledMidTransfer: download through a binLab, kill
// coordinator, restart it at once or once the error came.
func coordinatorKilledMidTransfer(t *testing.T, targetURL string, download func(ctx context.Context, b *binLab) (io.ReadCloser, error),
	restart bool, errorBound time.Duration) {
	t.Parallel()
	b := startBinLab(t, binLabOptions{})
	ctx, cancel := context.WithTimeout(t.Context(), errorBound+30*time.Second)
	defer cancel()
	body, err := download(ctx, b)
	if err != nil {
		t.Fatalf("download before the kill: %v", err)
	}
	defer body.Close()
	if _, err := io.CopyN(io.Discard, body, 1<<20); err != nil {
		t.Fatalf("first MiB: %v", err)
	}
	b.coord.kill()
	killed := time.Now()
	client := &http.Client{Transport: b.proxyTransport(t), Timeout: 10 * time.Second}
	var restarted time.Time
	served := make(chan time.Duration, 1) // how long after the restart a request was served
	if restart {
		b.startCoordinator(t)
		restarted = time.Now()
		go func() { served <- firstServed(ctx, client, targetURL+"/after-restart", restarted) }()
	}
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := io.Copy(io.Discard, body)
		done <- result{n, err}
	}()
	select {
	case r := <-done:
		took := time.Since(killed)
		if r.err == nil {
			t.Fatalf("the download ended cleanly after %d more bytes: a truncated body looks complete", r.n)
		}
		t.Logf("error %v after %v (%d bytes after the kill)", r.err, took.Round(time.Millisecond), r.n)
	case <-time.After(errorBound - time.Since(killed)):
		body.Close()
		<-done
		t.Fatalf("no error within %v of killing coordinator: the client hangs", errorBound)
	}
	if !restart {
		b.startCoordinator(t)
		restarted = time.Now()
		served <- firstServed(ctx, client, targetURL+"/after-restart", restarted)
	}
	took := <-served
	if took < 0 {
		t.Fatalf("no request served through the restarted coordinator")
	}
	t.Logf("next request served %v after the restart", took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("the first request through the restarted coordinator was served %v after it was up, want within 1s", took)
	}
}

// TestIdleClientAfterCoordinatorRestart: a localproxy that only exposes an
// app, with nothing in flight, learns of a coordinator restarted at once
// from its keepalive going unanswered (a PING is too small to draw a
// stateless reset; quictun/watch.go probes), not at QUIC's 30 s idle
// timeout, so the app is public again within a few seconds.
func TestIdleClientAfterCoordinatorRestart(t *testing.T) {
	t.Parallel()
	app := startTarget(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app") }))
	// A 1 s keepalive, so the test takes seconds; the bound below is a
	// keepalive interval, answerWithin, a probe and a reconnect.
	b := startBinLab(t, binLabOptions{publicHTTP: true, expose: []string{"app=" + strings.TrimPrefix(app.URL, "http://")},
		proxyArgs: []string{"--keepalive-interval", "1000"}})
	const bound = 5 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), bound+30*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	// No request before the kill, and a pause for the registration's
	// last packets: anything larger than a PING in flight to the restarted
	// coordinator would draw the stateless reset by itself.
	time.Sleep(2 * time.Second)
	b.coord.kill()
	b.startCoordinator(t)
	restarted := time.Now()
	for {
		code, _, err := b.publicGet(ctx, client, "app", "/")
		if err == nil && code == 200 {
			break
		}
		if ctx.Err() != nil || time.Since(restarted) > bound+25*time.Second {
			t.Fatalf("the app never answered again after the restart (last: %d %v)", code, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(restarted)
	t.Logf("the app answered again %v after the restart", took.Round(time.Millisecond))
	if took > bound {
		t.Errorf("the app answered again %v after coordinator restarted, want within %v", took, bound)
	}
}

// firstServed sends GET url every 50 ms until one is answered 200, and
// returns when that was, after since; -1 if ctx ended first.
func firstServed(ctx context.Context, client *http.Client, url string, since time.Time) time.Duration {
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return time.Since(since)
			}
		}
		select {
		case <-ctx.Done():
			return -1
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitUntil polls cond every 50 ms until it holds, for at most bound.
func waitUntil(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", bound, what)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestLocalAppKilled kills the exposed app (the demo app binary, SIGKILL):
// a request that was streaming from it fails, and the next public request
// gets 502 with a body that says the app is not reachable.
func TestLocalAppKilled(t *testing.T) {
	appPort := freeTCPPort(t)
	app := start(t, nil, "demoapp", "--listen", loop(appPort))
	b := startBinLab(t, binLabOptions{publicHTTP: true, expose: []string{"app=" + loop(appPort)}})
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	waitFor(t, "the app through the public port", func() bool {
		code, _, err := b.publicGet(t.Context(), client, "app", "/healthz")
		return err == nil && code == 200
	})

	// A server-sent event stream is open when the app dies.
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+loop(b.httpPort)+"/sse?n=1000&interval=100ms", nil)
	req.Host = "app.localhost"
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || resp.StatusCode != 200 {
		t.Fatalf("event stream: %d %v", resp.StatusCode, err)
	}
	app.kill()
	if _, err := io.Copy(io.Discard, resp.Body); err == nil {
		t.Fatal("the event stream ended cleanly when the app was killed: a cut stream looks complete")
	}

	code, body, err := b.publicGet(t.Context(), client, "app", "/after-kill")
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusBadGateway || !strings.Contains(body, "refused") || !strings.Contains(body, loop(appPort)) {
		t.Fatalf("after the app was killed: %d %q; want 502 saying %s refused the connection", code, body, loop(appPort))
	}
	t.Logf("public port answers %d %q", code, strings.TrimSpace(body))
}

// slowloris opens n connections to addr and sends head one byte at a time,
// a byte per interval per connection, until ctx ends; it returns once every
// connection is open and has sent its first byte, and wait waits for the
// senders to stop and close.
func slowloris(ctx context.Context, t *testing.T, addr string, n int, head string, interval time.Duration) (wait func()) {
	t.Helper()
	var wg sync.WaitGroup
	var opened sync.WaitGroup
	var failed atomic.Int64
	for range n {
		opened.Add(1)
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				failed.Add(1)
				opened.Done()
				return
			}
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			first := true
			for i := 0; i < len(head); i++ {
				if _, err := c.Write([]byte{head[i]}); err != nil {
					break
				}
				if first {
					opened.Done()
					first = false
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(interval):
				}
			}
			if first {
				failed.Add(1)
				opened.Done()
			}
		})
	}
	opened.Wait()
	if f := failed.Load(); f > 0 {
		t.Errorf("%d of %d slow connections to %s could not open", f, n, addr)
	}
	return wg.Wait
}

// TestSlowloris holds 200 connections that send their request heads one
// byte a second on localproxy's listener and on coordinator's public HTTP
// port, and checks that normal clients are served on both meanwhile.
func TestSlowloris(t *testing.T) {
	appPort := freeTCPPort(t)
	start(t, nil, "demoapp", "--listen", loop(appPort))
	b := startBinLab(t, binLabOptions{publicHTTP: true, expose: []string{"app=" + loop(appPort)}})
	const slow = 200
	ctx, cancel := context.WithCancel(t.Context())
	head := "GET http://" + loop(appPort) + "/slow HTTP/1.1\r\nHost: " + loop(appPort) + "\r\nX-Slow: " + strings.Repeat("a", 200) + "\r\n\r\n"
	waitProxy := slowloris(ctx, t, loop(b.proxyPort), slow, head, time.Second)
	waitPublic := slowloris(ctx, t, loop(b.httpPort), slow, "GET /slow HTTP/1.1\r\nHost: app.localhost\r\nX-Slow: "+strings.Repeat("a", 200)+"\r\n\r\n", time.Second)
	defer func() { cancel(); waitProxy(); waitPublic() }()
	waitFor(t, "the slow connections to be accepted", func() bool {
		v, err := metric(b.proxyMetrics, "quictunnel_proxy_connections_active")
		return err == nil && v >= slow
	})

	forward := &http.Client{Transport: b.proxyTransport(t), Timeout: 30 * time.Second}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	public := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var took []time.Duration
	for i := range 10 {
		begin := time.Now()
		resp, err := forward.Get(fmt.Sprintf("http://%s/normal-%d", loop(appPort), i))
		if err != nil {
			t.Fatalf("normal client through localproxy during slowloris: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("normal client through localproxy: %d", resp.StatusCode)
		}
		code, _, err := b.publicGet(t.Context(), public, "app", fmt.Sprintf("/normal-%d", i))
		if err != nil || code != 200 {
			t.Fatalf("normal client on the public port during slowloris: %d %v", code, err)
		}
		took = append(took, time.Since(begin))
	}
	slices.Sort(took)
	t.Logf("with %d slow connections on each port, a forward and a public request took %v (median), %v (max)",
		slow, took[len(took)/2].Round(time.Microsecond), took[len(took)-1].Round(time.Microsecond))
}

// badTokenClient connects to coordinator at addr from tr, says Hello with a
// wrong token and returns the error the connection was closed with.
func badTokenClient(ctx context.Context, tr *quic.Transport, addr *net.UDPAddr, tlsConf *tls.Config, token string) error {
	conn, err := tr.Dial(ctx, addr, tlsConf, &quic.Config{HandshakeIdleTimeout: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if err := quictun.WriteFrame(s, &quictun.Hello{Version: quictun.ProtocolVersion, Token: token}); err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	select {
	case <-conn.Context().Done():
		return context.Cause(conn.Context())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestBadTokenFlood sends 1,000 QUIC connections with wrong tokens at
// coordinator while a good client keeps making requests and a second good
// client connects: every bad one is refused as unauthorized, every good
// request succeeds within a generous bound (the times are logged, not
// asserted).
func TestBadTokenFlood(t *testing.T) {
	target := startTarget(t, "127.0.0.1", bulkHandler())
	b := startBinLab(t, binLabOptions{})
	forward := &http.Client{Transport: b.proxyTransport(t), Timeout: 30 * time.Second}
	get := func() (time.Duration, error) {
		begin := time.Now()
		resp, err := forward.Get(target.URL + "/good")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			return 0, fmt.Errorf("status %d", resp.StatusCode)
		}
		return time.Since(begin), nil
	}
	var baseline []time.Duration
	for range 20 {
		d, err := get()
		if err != nil {
			t.Fatalf("before the flood: %v", err)
		}
		baseline = append(baseline, d)
	}

	_, pool := loadCoordinatorCert(t)
	tlsConf := &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{quictun.ALPNControl}, MinVersion: tls.VersionTLS13}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	qtr := &quic.Transport{Conn: udp}
	defer udp.Close()
	defer qtr.Close()
	coordAddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: b.quicPort}

	const bad, workers = 1000, 50
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	jobs := make(chan int)
	var refused, resets, other atomic.Int64
	var firstOther atomic.Value
	var wg sync.WaitGroup
	floodStart := time.Now()
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				err := badTokenClient(ctx, qtr, coordAddr, tlsConf, fmt.Sprintf("bad-token-%d", i))
				var ae *quic.ApplicationError
				var sr *quic.StatelessResetError
				switch {
				case errors.As(err, &ae) && ae.Remote && ae.ErrorCode == quic.ApplicationErrorCode(quictun.CodeUnauthorized):
					refused.Add(1)
				case errors.As(err, &sr):
					// coordinator refused it, but the close was lost in the
					// flood and the connection already forgotten when the
					// client spoke again: auth_failures_total below says
					// whether every one was refused.
					resets.Add(1)
				default:
					other.Add(1)
					firstOther.CompareAndSwap(nil, fmt.Sprint(err))
				}
			}
		})
	}
	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		defer close(jobs)
		for i := range bad {
			select {
			case jobs <- i:
			case <-ctx.Done():
				return
			}
		}
	}()

	// While the flood runs: the connected client keeps working, and a new
	// good client connects and works too.
	second := start(t, nil, "localproxy", "--listen", "127.0.0.1:0", "--coordinator", loop(b.quicPort), "--token", binToken,
		"--ca", filepath.Join(b.certs, "ca.pem"), "--server-name", "localhost", "--name", "second")
	var during []time.Duration
	var flooded bool
	for !flooded || len(during) < 20 {
		d, err := get()
		if err != nil {
			t.Fatalf("good request during the flood: %v", err)
		}
		during = append(during, d)
		select {
		case <-floodDone:
			flooded = true
		default:
		}
	}
	wg.Wait()
	floodTook := time.Since(floodStart)
	waitFor(t, "the second client to connect", func() bool { return strings.Contains(second.out.String(), "connected to coordinator") })

	if other.Load() != 0 {
		t.Fatalf("%d of %d bad-token connections refused as unauthorized, %d reset after a lost close; %d ended otherwise (first: %v)",
			refused.Load(), bad, resets.Load(), other.Load(), firstOther.Load())
	}
	if n := resets.Load(); n > 0 {
		t.Logf("%d bad-token clients saw a stateless reset: coordinator's close to them was lost in the flood", n)
	}
	if v, err := metric(b.coordMetrics, `quictunnel_auth_failures_total{reason="invalid_token"}`); err != nil || v != bad {
		t.Errorf("auth_failures_total %v (%v), want %d", v, err, bad)
	}
	if v, err := metric(b.coordMetrics, "quictunnel_clients_connected"); err != nil || v != 2 {
		t.Errorf("clients_connected %v (%v), want the 2 good clients", v, err)
	}
	slices.Sort(baseline)
	slices.Sort(during)
	t.Logf("%d bad-token connections refused in %v; good requests: before median %v max %v, during (%d) median %v max %v",
		bad, floodTook.Round(time.Millisecond), baseline[len(baseline)/2].Round(time.Microsecond), baseline[len(baseline)-1].Round(time.Microsecond),
		len(during), during[len(during)/2].Round(time.Microsecond), during[len(during)-1].Round(time.Microsecond))

	// The log: a line for the first failure from 127.0.0.1, then summaries
	// with counts (every 10 s, and the rest when coordinator stops).
	b.coord.cmd.Process.Signal(os.Interrupt)
	err = <-b.coord.done
	b.coord.done <- err // for the cleanup
	out := b.coord.out.String()
	full := strings.Count(out, "client refused")
	summed := 0
	for _, m := range regexp.MustCompile(`more failed authentications" source=127\.0\.0\.1 invalid_token=(\d+)`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[1])
		summed += n
	}
	if full > 3 || full+summed != bad {
		t.Errorf("%d lines for single refusals and %d in summaries, want a few lines adding up to %d", full, summed, bad)
	}
}
