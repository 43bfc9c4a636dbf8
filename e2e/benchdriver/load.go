package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ioTimeout bounds every single network operation of the driver.
const ioTimeout = 30 * time.Second

// route is one way of reaching the demo app: directly, or through the
// tunnel in one of its modes.
type route struct {
	name string
	base string // "http://host:port" the request URL starts with
	host string // Host header to send instead of base's, if set
	// transport returns a fresh HTTP client transport for this route.
	transport func() *http.Transport
	// reference marks a path shown for information that no target of
	// issue 6 covers (it is left out of the target table).
	reference bool
	// quicFloor marks the route through the two relays joined by bare
	// quic-go (quicrelay.go), whose processes are measured instead of the
	// tunnel's.
	quicFloor bool
	// tcp marks the routes through the localproxy on the TCP transport
	// (issue 19), whose process is measured instead of the QUIC one's.
	tcp bool
	// proto, if set, is the protocol every response must come over
	// ("HTTP/2.0").
	proto string
}

func newTransport() *http.Transport {
	return &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 256,
		ResponseHeaderTimeout: ioTimeout, DialContext: (&net.Dialer{Timeout: ioTimeout}).DialContext}
}

func directRoute(app string) route {
	return route{name: "direct", base: "http://" + app, transport: newTransport}
}

// absoluteFormRoute sends requests to the proxy in absolute form.
func absoluteFormRoute(app, proxy string) route {
	return route{name: "forward absolute-form", base: "http://" + app, transport: func() *http.Transport {
		t := newTransport()
		t.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: proxy})
		return t
	}}
}

// connectRoute opens every connection with CONNECT through the proxy and
// speaks plain HTTP inside the tunnel, so the bytes are the same as
// direct's (no TLS cost on either side of the comparison).
func connectRoute(app, proxy string) route {
	return route{name: "forward CONNECT", base: "http://" + app, transport: func() *http.Transport {
		t := newTransport()
		t.DialContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dialConnect(ctx, proxy, addr)
		}
		return t
	}}
}

const quicFloorName = "CONNECT through two relays over bare quic-go (floor)"

// quicFloorRoute is connectRoute through the two relays joined by bare
// quic-go: the floor of a QUIC tunnel's cost (quicrelay.go).
func quicFloorRoute(app, proxy string) route {
	r := connectRoute(app, proxy)
	r.name, r.reference, r.quicFloor = quicFloorName, true, true
	return r
}

// tcpTransportPrefix starts the names of the routes over the TCP
// transport: the issue-6 targets leave them out, issue 19's cover them.
const tcpTransportPrefix = "TCP transport: "

// overTCP is r through the localproxy on the TCP transport.
func overTCP(r route) route {
	r.name, r.reference, r.tcp = tcpTransportPrefix+r.name, true, true
	return r
}

// exposeTCPRoute reaches the app exposed with --expose-tcp on its public
// port of coordinator.
func exposeTCPRoute(public string) route {
	return route{name: "reverse --expose-tcp port", base: "http://" + public, transport: newTransport}
}

// hostRoute reaches the app exposed under host on coordinator's public
// HTTP port (Host routing).
func hostRoute(public, host string) route {
	return route{name: "reverse public port", base: "http://" + public, host: host, transport: newTransport}
}

func reverseRoute(public string) route {
	return route{name: "reverse public port", base: "http://" + public, host: "app.localhost", transport: newTransport}
}

// reverseTLSRoute reaches the exposed app on coordinator's public HTTPS
// port: the driver speaks TLS (HTTP/1.1) to coordinator, which decrypts.
// Direct stays plain HTTP, so its ratio includes TLS on both ends.
func reverseTLSRoute(public string, roots *x509.CertPool) route {
	return route{name: "public HTTPS port (reverse, TLS)", base: "https://" + public, host: "app.localhost", reference: true,
		transport: func() *http.Transport {
			t := newTransport()
			t.TLSClientConfig = &tls.Config{RootCAs: roots, ServerName: "app.localhost"}
			t.Protocols = new(http.Protocols)
			t.Protocols.SetHTTP1(true)
			return t
		}}
}

// reverseH2Route is reverseTLSRoute over HTTP/2: every load client's
// requests are streams of one connection (the server allows 250 at once).
func reverseH2Route(public string, roots *x509.CertPool) route {
	r := reverseTLSRoute(public, roots)
	r.name, r.proto = "public HTTPS port over HTTP/2 (reverse, TLS, one connection)", "HTTP/2.0"
	tlsTransport := r.transport
	r.transport = func() *http.Transport {
		t := tlsTransport()
		t.Protocols = new(http.Protocols)
		t.Protocols.SetHTTP2(true)
		t.MaxConnsPerHost = 1
		return t
	}
	return r
}

// dialConnect opens a tunnel to addr through the proxy. The answer is
// read through a buffer, as browsers and curl read it; bytes of the
// tunnel read with it stay in front of the connection.
func dialConnect(ctx context.Context, proxy, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: ioTimeout}
	c, err := d.DialContext(ctx, "tcp", proxy)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", addr, addr)
	br := bufio.NewReaderSize(c, 4096)
	var head []byte
	for !endsHead(head) {
		line, err := br.ReadSlice('\n')
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("CONNECT %s: %w", addr, err)
		}
		if head = append(head, line...); len(head) > 4096 {
			c.Close()
			return nil, fmt.Errorf("CONNECT %s: answer too long", addr)
		}
	}
	if len(head) < 12 || string(head[9:12]) != "200" {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %q", addr, head)
	}
	c.SetDeadline(time.Time{})
	if br.Buffered() == 0 {
		return c, nil
	}
	return &bufferedConn{Conn: c, r: io.MultiReader(io.LimitReader(br, int64(br.Buffered())), c)}, nil
}

// bufferedConn reads what a buffer already holds before the connection.
type bufferedConn struct {
	net.Conn
	r io.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func endsHead(b []byte) bool {
	n := len(b)
	return n >= 4 && string(b[n-4:]) == "\r\n\r\n"
}

func (r route) request(ctx context.Context, method, path string, body io.Reader, n int64) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, r.base+path, body)
	if err != nil {
		return nil, err
	}
	if r.host != "" {
		req.Host = r.host
	}
	if body != nil {
		req.ContentLength = n
	}
	return req, nil
}

// download fetches n bytes from the demo app's /bytes.
func download(ctx context.Context, r route, n int64) error {
	tr := r.transport()
	defer tr.CloseIdleConnections()
	req, err := r.request(ctx, "GET", "/bytes?n="+strconv.FormatInt(n, 10), nil, 0)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("%s download: %w", r.name, err)
	}
	defer resp.Body.Close()
	got, err := io.Copy(io.Discard, resp.Body)
	if err == nil && (resp.StatusCode != 200 || got != n) {
		err = fmt.Errorf("status %s, %d of %d bytes", resp.Status, got, n)
	}
	if err != nil {
		return fmt.Errorf("%s download: %w", r.name, err)
	}
	return nil
}

// upload posts n bytes to the demo app's echo, which reads them all
// (hashing them) and reports the length it got.
func upload(ctx context.Context, r route, n int64) error {
	tr := r.transport()
	defer tr.CloseIdleConnections()
	req, err := r.request(ctx, "POST", "/upload", &source{left: n}, n)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("%s upload: %w", r.name, err)
	}
	defer resp.Body.Close()
	var echo struct {
		BodyLength int64 `json:"body_length"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&echo)
	if err == nil && (resp.StatusCode != 200 || echo.BodyLength != n) {
		err = fmt.Errorf("status %s, the app got %d of %d bytes", resp.Status, echo.BodyLength, n)
	}
	if err != nil {
		return fmt.Errorf("%s upload: %w", r.name, err)
	}
	return nil
}

// sourceBlock is what an upload repeats: incompressible-looking bytes.
var sourceBlock = func() []byte {
	b := make([]byte, 64<<10)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}()

// source reads left bytes of sourceBlock, repeated.
type source struct{ left int64 }

func (s *source) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.left)]
	n := 0
	for n < len(p) {
		n += copy(p[n:], sourceBlock)
	}
	s.left -= int64(n)
	return n, nil
}

// loadResult is the outcome of a small-request load.
type loadResult struct {
	requests int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (l loadResult) rate() float64 { return float64(l.requests) / l.elapsed.Seconds() }

// maxPerClient bounds the latencies one load client records.
const maxPerClient = 1 << 20

// smallLoad runs clients keep-alive clients, each sending GET /healthz
// one after the other for dur (after one warm-up request each, which
// opens its connection), and returns the rate and latency percentiles.
func smallLoad(ctx context.Context, r route, clients int, dur time.Duration) (loadResult, error) {
	tr := r.transport()
	if tr.MaxConnsPerHost == 0 {
		tr.MaxConnsPerHost = clients
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: ioTimeout}
	get := func() error {
		req, err := r.request(ctx, "GET", "/healthz", nil, 0)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %s", resp.Status)
		}
		if err == nil && r.proto != "" && resp.Proto != r.proto {
			err = fmt.Errorf("response over %s, want %s", resp.Proto, r.proto)
		}
		return err
	}
	var (
		warm, wg sync.WaitGroup
		start    = make(chan struct{})
		deadline atomic.Int64
		mu       sync.Mutex
		firstErr error
		lat      = make([][]time.Duration, clients)
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = fmt.Errorf("%s: %w", r.name, err)
		}
		mu.Unlock()
	}
	warm.Add(clients)
	for w := range clients {
		wg.Go(func() {
			err := get()
			warm.Done()
			if err != nil {
				fail(err)
				return
			}
			<-start
			end := deadline.Load()
			for len(lat[w]) < maxPerClient && time.Now().UnixNano() < end && ctx.Err() == nil {
				t0 := time.Now()
				if err := get(); err != nil {
					fail(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	warm.Wait()
	t0 := time.Now()
	deadline.Store(t0.Add(dur).UnixNano())
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)
	if firstErr != nil {
		return loadResult{}, firstErr
	}
	all := slices.Concat(lat...)
	if len(all) == 0 {
		return loadResult{}, fmt.Errorf("%s: no request completed", r.name)
	}
	slices.Sort(all)
	return loadResult{requests: len(all), elapsed: elapsed, p50: all[len(all)/2], p99: all[len(all)*99/100]}, nil
}

// healthRequest is one small keep-alive request on a raw connection.
const healthRequest = "GET /healthz HTTP/1.1\r\nHost: app\r\n\r\n"

// firstByte measures one new session: connect (directly, or to the proxy
// and CONNECT through it), send a request, wait for the answer's first
// byte.
func firstByte(ctx context.Context, app, proxy string) (time.Duration, error) {
	return firstByteOf(ctx, app, proxy, healthRequest)
}

// reverseFirstByte measures one new connection to the public port, routed
// to the exposed demo app by name.
func reverseFirstByte(ctx context.Context, public string) (time.Duration, error) {
	return firstByteOf(ctx, public, "", "GET /healthz HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
}

func firstByteOf(ctx context.Context, app, proxy, request string) (time.Duration, error) {
	t0 := time.Now()
	var c net.Conn
	var err error
	if proxy == "" {
		c, err = (&net.Dialer{Timeout: ioTimeout}).DialContext(ctx, "tcp", app)
	} else {
		c, err = dialConnect(ctx, proxy, app)
	}
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, request); err != nil {
		return 0, err
	}
	br := bufio.NewReader(c)
	if _, err := br.Peek(1); err != nil {
		return 0, fmt.Errorf("first byte: %w", err)
	}
	d := time.Since(t0)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return d, nil
}

// held is an open tunnel session kept idle by the memory benchmark.
type held struct {
	c  net.Conn
	br *bufio.Reader
}

// openHeld opens a CONNECT session to app and makes one request on it
// (the app expects a request soon after a connection opens).
func openHeld(ctx context.Context, proxy, app string) (*held, error) {
	c, err := dialConnect(ctx, proxy, app)
	if err != nil {
		return nil, err
	}
	h := &held{c: c, br: bufio.NewReaderSize(c, 512)}
	if err := h.ask(); err != nil {
		c.Close()
		return nil, err
	}
	return h, nil
}

// ask sends a request on the session and reads the whole answer.
func (h *held) ask() error {
	h.c.SetDeadline(time.Now().Add(ioTimeout))
	defer h.c.SetDeadline(time.Time{})
	if _, err := io.WriteString(h.c, healthRequest); err != nil {
		return err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return err
}

// parallel runs f(i) for i in [0, n) on workers goroutines and returns the
// number of failures and the first error.
func parallel(ctx context.Context, n, workers int, f func(i int) error) (int, error) {
	var (
		next, failed atomic.Int64
		mu           sync.Mutex
		first        error
		wg           sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					failed.Add(1)
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil && first == nil {
		first = err
	}
	return int(failed.Load()), first
}
