package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"quictunnel/internal/relay"
)

// HTTP/2 on a TLS listener that offers "h2" in ALPN: the connection is
// served by golang.org/x/net/http2, and each request is converted at the
// edge into the HTTP/1.1 head the rest of the proxy knows (headFromH2).
// From there it takes the HTTP/1.1 path's steps: the router (Host
// routing, forwarding fields, credentials, allow-from), the same request
// head upstream, the same access-log line and counters. The app still gets
// HTTP/1.1 over the tunnel; each upstream connection carries one request
// at a time and is kept for the next request of the same HTTP/2
// connection to the same app (h2conn.idle). Websockets stay on HTTP/1.1:
// the server does not announce extended CONNECT (RFC 8441), so browsers
// open an HTTP/1.1 connection for them.

// h2MaxIdleUpstreams bounds the idle upstream connections one HTTP/2
// connection keeps for its next requests: as many as a busy client's
// concurrent streams, about; an HTTP/1.1 client would hold as many
// connections. Idle ones hold no buffers.
const h2MaxIdleUpstreams = 64

// h2Server is the HTTP/2 machinery of an engine.
type h2Server struct {
	srv  *http2.Server
	base *http.Server // settings the HTTP/2 server takes, and its graceful shutdown
}

func newH2Server(cfg *Config) *h2Server {
	s := &h2Server{
		// MaxConcurrentStreams: x/net's default, 250 per connection.
		srv: &http2.Server{IdleTimeout: cfg.IdleTimeout},
		base: &http.Server{MaxHeaderBytes: cfg.MaxHeaderBytes, IdleTimeout: cfg.IdleTimeout,
			ErrorLog: slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug)},
	}
	http2.ConfigureServer(s.base, s.srv) // only registers the shutdown hook: cannot fail
	return s
}

// goAway asks every HTTP/2 connection to finish the requests it carries
// and take no more (GOAWAY): draining.
func (s *h2Server) goAway() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the base server has no connection of its own to wait for
	s.base.Shutdown(ctx)
}

// h2conn is one client connection that speaks HTTP/2.
type h2conn struct {
	e      *engine
	c      *tls.Conn
	ctx    context.Context // ends with the connection
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup         // the handlers running
	idle   map[string][]*upstream // upstreams between requests, by route key
}

// serveH2 serves the HTTP/2 connection tc until it ends.
func (e *engine) serveH2(ctx context.Context, tc *tls.Conn) {
	hc := &h2conn{e: e, c: tc, ctx: ctx, idle: map[string][]*upstream{}}
	e.h2.srv.ServeConn(tc, &http2.ServeConnOpts{Context: ctx, BaseConfig: e.h2.base, Handler: hc})
	hc.mu.Lock()
	hc.closed = true
	for _, us := range hc.idle {
		for _, u := range us {
			u.close()
		}
	}
	hc.idle = nil
	hc.mu.Unlock()
	hc.wg.Wait() // a handler x/net started but did not wait for
}

// ServeHTTP serves one request of the connection.
func (hc *h2conn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hc.mu.Lock()
	if hc.closed {
		hc.mu.Unlock()
		return
	}
	hc.wg.Add(1)
	hc.mu.Unlock()
	defer hc.wg.Done()
	x := &h2exchange{hc: hc, w: w, r: r, start: time.Now()}
	hc.e.stats.requests.Add(1)
	x.serve()
}

// copyBuffer returns a buffer for a response body, from copyBufs.
func (e *engine) copyBuffer() *[]byte {
	if b, ok := e.copyBufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 32<<10)
	return &b
}

// take returns an idle upstream for key, or nil.
func (hc *h2conn) take(key string) *upstream {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	us := hc.idle[key]
	if len(us) == 0 {
		return nil
	}
	u := us[len(us)-1]
	hc.idle[key] = us[:len(us)-1]
	u.br, u.bw = hc.e.reader(u.c), hc.e.writer(u.c)
	return u
}

// put keeps u for a next request, or closes it.
func (hc *h2conn) put(u *upstream) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	n := 0
	for _, us := range hc.idle {
		n += len(us)
	}
	if hc.closed || n >= h2MaxIdleUpstreams || u.br.Buffered() > 0 {
		u.close() // u.br holds bytes no request asked for: not reusable
		return
	}
	hc.e.putReader(u.br)
	hc.e.putWriter(u.bw)
	u.br, u.bw = nil, nil
	hc.idle[u.key] = append(hc.idle[u.key], u)
}

// h2exchange is one HTTP/2 request relayed as HTTP/1.1.
type h2exchange struct {
	hc       *h2conn
	w        http.ResponseWriter
	r        *http.Request
	start    time.Time
	method   string
	target   string
	status   int // the final status sent, 0: none yet
	up, down int64
	u        *upstream
	cut      bool                     // the response was cut short: the stream is reset
	cur      atomic.Pointer[upstream] // x.u, for the goroutine that aborts it
}

func (x *h2exchange) serve() {
	e := x.hc.e
	x.method, x.target = x.r.Method, x.r.Host+x.r.RequestURI
	if x.r.Method == http.MethodConnect {
		x.fail(http.StatusMethodNotAllowed, "CONNECT is not served here: this is the public side of exposed apps", errMalformed)
		return
	}
	h, err := headFromH2(x.r, e.cfg.MaxHeaderBytes)
	if errors.Is(err, errHeadTooLarge) {
		x.fail(http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request header block exceeds %d bytes", e.cfg.MaxHeaderBytes), err)
		return
	}
	if err != nil {
		x.fail(http.StatusBadRequest, err.Error(), err)
		return
	}
	rt, err := e.router.route(x.r.Context(), h, x.hc.c)
	if ar := (*authRequired)(nil); errors.As(err, &ar) {
		x.target = ar.target
		reason := "this app requires a user name and password"
		if _, sent := h.get("Authorization"); sent {
			reason = "wrong user name or password"
		}
		x.w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q, charset=\"UTF-8\"", ar.realm))
		x.fail(http.StatusUnauthorized, reason, errAppAuth)
		return
	}
	if err != nil {
		status, reason := statusOf(h.target, err)
		if he := (*httpError)(nil); errors.As(err, &he) {
			status, reason = he.status, he.reason
		}
		x.fail(status, reason, err)
		return
	}
	x.target = rt.target
	err = x.exchange(h, rt)
	if err != nil && x.u != nil {
		x.u.abort()
		x.u = nil
	}
	x.log(err)
	if x.u != nil {
		x.hc.put(x.u)
	}
	if x.cut {
		// The head is out: only a reset tells the client the body is
		// not whole.
		panic(http.ErrAbortHandler)
	}
}

// fail answers the request with a short text/plain error, as the
// HTTP/1.1 path does, and logs it.
func (x *h2exchange) fail(status int, reason string, err error) {
	x.writeError(status, reason)
	x.log(err)
}

func (x *h2exchange) writeError(status int, reason string) {
	body := fmt.Sprintf("%d %s: %s\n", status, http.StatusText(status), reason)
	hd := x.w.Header()
	hd.Set("Content-Type", "text/plain; charset=utf-8")
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	x.writeHeader(status)
	io.WriteString(x.w, body)
}

// writeHeader sends the final response head and records its status.
func (x *h2exchange) writeHeader(status int) {
	x.status = status
	x.hc.e.countStatus(status)
	x.w.WriteHeader(status)
}

// log writes the access-log line and passes the record on to the
// upstream that wants it.
func (x *h2exchange) log(err error) {
	var session string
	u := x.cur.Load()
	if u != nil {
		session = u.session
	}
	outcome := x.hc.e.logRequest(logEntry{client: x.hc.c, proto: "HTTP/2.0", method: x.method, target: x.target,
		status: x.status, up: x.up, down: x.down, session: session, start: x.start, canceled: x.r.Context().Err() != nil}, err)
	if u == nil {
		return
	}
	if rr, ok := u.c.(RequestReporter); ok {
		rr.ReportRequest(RequestRecord{Client: addrPortOf(x.hc.c.RemoteAddr()), Method: x.method, Target: x.target, Status: x.status,
			Up: x.up, Down: x.down, Duration: time.Since(x.start), TLS: true, Outcome: outcome})
	}
}

// headFromH2 converts an HTTP/2 request into the HTTP/1.1 head the
// routers and the upstream take: Host from :authority, the fields in
// name order (HTTP/2 leaves none hop-by-hop), cookies joined into one
// field (RFC 9113 §8.2.3), and the body framed by its length when the
// client gave one, else chunked. The head is parsed as one received over
// HTTP/1.1, with the same checks and size limit.
func headFromH2(r *http.Request, limit int) (*head, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.Method, r.RequestURI, r.Host)
	names := make([]string, 0, len(r.Header))
	for name := range r.Header {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		switch name {
		case "Host", "Content-Length", "Transfer-Encoding":
			continue
		case "Cookie":
			fmt.Fprintf(&b, "Cookie: %s\r\n", strings.Join(r.Header[name], "; "))
			continue
		}
		for _, v := range r.Header[name] {
			fmt.Fprintf(&b, "%s: %s\r\n", name, v)
		}
	}
	switch {
	case r.ContentLength > 0 || (r.ContentLength == 0 && r.Header.Get("Content-Length") != ""):
		fmt.Fprintf(&b, "Content-Length: %d\r\n", r.ContentLength)
	case r.ContentLength < 0:
		b.WriteString("Transfer-Encoding: chunked\r\n")
	}
	b.WriteString("\r\n")
	if b.Len() > limit {
		return nil, errHeadTooLarge
	}
	return parseRequestHead(bufio.NewReaderSize(&b, b.Len()+16), limit)
}

// exchange relays the request over an upstream to the app and its
// response back.
func (x *h2exchange) exchange(h *head, rt *route) error {
	x.u = x.hc.take(rt.key)
	reused := x.u != nil
	if !reused {
		if err := x.dial(rt); err != nil {
			return err
		}
	}
	// A client that resets the stream, or a connection that ends, ends
	// the exchange on the upstream too (a long poll does not wait on).
	x.cur.Store(x.u)
	stop := context.AfterFunc(x.r.Context(), func() { x.cur.Load().abort() })
	defer func() {
		if !stop() {
			x.u = nil // aborted: not to be kept
		}
	}()
	resp, body, err := x.send(h, rt, reused)
	if err != nil {
		return err
	}
	defer body.stop()
	if resp.status == http.StatusSwitchingProtocols {
		x.writeError(http.StatusBadGateway, fmt.Sprintf("%s switched protocols without being asked to", rt.key))
		return fmt.Errorf("%w: 101 without an upgrade request", errMalformed)
	}
	kind := resp.responseBody(h.method)
	x.copyHead(resp, kind)
	x.writeHeader(resp.status)
	n, err := x.copyBody(kind, resp.contentLength)
	x.down = n
	if err != nil {
		x.cut = true
		if body.clientFailed() {
			return fmt.Errorf("request body: %w", body.wait())
		}
		return fmt.Errorf("response body: %w", err)
	}
	err = body.waitGrace(requestBodyGrace)
	x.up = body.count()
	if err != nil {
		x.cut = true
		return fmt.Errorf("request body: %w", err)
	}
	if resp.close || kind == bodyUntilClose {
		x.u.close()
		x.u = nil
	}
	return nil
}

// dial opens a new upstream for rt.
func (x *h2exchange) dial(rt *route) error {
	nc, err := rt.dial(x.r.Context())
	if err != nil {
		status, reason := statusOf(rt.key, err)
		x.writeError(status, reason)
		return err
	}
	x.u = &upstream{key: rt.key, c: nc, br: x.hc.e.reader(nc), bw: x.hc.e.writer(nc), session: sessionOf(nc)}
	x.cur.Store(x.u)
	return nil
}

// send writes the request head upstream, starts relaying its body and
// returns the final response head, having passed interim ones on. A
// reused upstream the app had closed meanwhile is replaced once, for a
// request without a body.
func (x *h2exchange) send(h *head, rt *route, reused bool) (*head, *h2body, error) {
	for attempt := 0; ; attempt++ {
		err := x.writeHead(h, rt)
		var body *h2body
		if err == nil && h.requestHasBody() {
			body = x.relayBody(h)
		}
		var resp *head
		if err == nil {
			resp, err = x.readFinalResponse()
		}
		if err == nil {
			return resp, body, nil
		}
		if body.clientFailed() {
			b := body.wait()
			status := http.StatusBadRequest
			if errors.Is(b, os.ErrDeadlineExceeded) {
				status = http.StatusRequestTimeout
				b = fmt.Errorf("request body stopped arriving (nothing for %s after %d bytes): %w", x.hc.e.cfg.BodyReadTimeout, body.n, b)
			}
			x.writeError(status, b.Error())
			return nil, nil, b
		}
		var de *DialError
		if reused && attempt == 0 && body == nil && x.status == 0 && !errors.As(err, &de) && (isEOF(err) || errors.Is(err, net.ErrClosed)) {
			// An idle upstream the app (or the tunnel) closed meanwhile:
			// once more on a new one.
			x.u.close()
			if err := x.dial(rt); err != nil {
				return nil, nil, err
			}
			continue
		}
		body.stop()
		if errors.As(err, &de) {
			x.writeError(de.Status, de.Reason)
		} else {
			x.writeError(http.StatusBadGateway, fmt.Sprintf("bad response from %s: %v", rt.key, err))
		}
		return nil, nil, err
	}
}

func (x *h2exchange) writeHead(h *head, rt *route) error {
	if _, err := x.u.bw.Write(appendRequestHead(nil, h, rt)); err != nil {
		return err
	}
	return x.u.bw.Flush()
}

// readFinalResponse reads response heads, passing 1xx interim ones (100
// Continue, 103 Early Hints) on, until the final one or a 101.
func (x *h2exchange) readFinalResponse() (*head, error) {
	cfg := &x.hc.e.cfg
	if t := cfg.ResponseHeaderTimeout; t > 0 {
		x.u.c.SetReadDeadline(time.Now().Add(t))
		defer x.u.c.SetReadDeadline(time.Time{})
	}
	for {
		resp, err := parseResponseHead(x.u.br, cfg.MaxHeaderBytes)
		if err != nil {
			return nil, err
		}
		if resp.status/100 != 1 || resp.status == http.StatusSwitchingProtocols {
			return resp, nil
		}
		hd := x.w.Header()
		addFields(hd, resp)
		x.w.WriteHeader(resp.status)
		clear(hd)
	}
}

// h2HopByHop are response fields HTTP/2 has no place for (RFC 9113
// §8.2.2), beside those in hopByHop.
var h2HopByHop = []string{"transfer-encoding"}

// addFields adds resp's end-to-end fields to hd.
func addFields(hd http.Header, resp *head) {
	for _, f := range resp.fields {
		if containsFold(hopByHop, f.name) || containsFold(h2HopByHop, f.name) || containsFold(resp.connTokens, f.name) {
			continue
		}
		hd.Add(f.name, f.value)
	}
}

// copyHead prepares the response head: the app's fields, and no
// Content-Type of net/http's guessing when the app sent none.
func (x *h2exchange) copyHead(resp *head, kind bodyKind) {
	hd := x.w.Header()
	addFields(hd, resp)
	if _, ok := hd["Content-Type"]; !ok {
		hd["Content-Type"] = nil
	}
	if kind == bodyChunked || kind == bodyUntilClose {
		hd.Del("Content-Length")
	}
}

// copyBody relays the response body to the client, flushing whenever the
// upstream has nothing buffered, so streamed responses (server-sent
// events, long polls) arrive as they are written.
func (x *h2exchange) copyBody(kind bodyKind, length int64) (int64, error) {
	var src io.Reader
	switch kind {
	case bodyNone:
		return 0, nil
	case bodyLength:
		src = io.LimitReader(x.u.br, length)
	case bodyChunked:
		src = httputil.NewChunkedReader(x.u.br)
	default:
		src = x.u.br
	}
	if kind == bodyLength && length <= int64(x.u.br.Buffered()) {
		// A small body, all read with the head: no copy buffer.
		b, _ := x.u.br.Peek(int(length))
		m, err := x.w.Write(b)
		x.u.br.Discard(m)
		return int64(m), err
	}
	rc := http.NewResponseController(x.w)
	buf := x.hc.e.copyBuffer()
	defer x.hc.e.copyBufs.Put(buf)
	var n int64
	for {
		m, err := src.Read(*buf)
		if m > 0 {
			if _, werr := x.w.Write((*buf)[:m]); werr != nil {
				return n, werr
			}
			n += int64(m)
			// Not the last bytes, which the handler's return sends with
			// the end of the stream, in one write.
			if x.u.br.Buffered() == 0 && (kind != bodyLength || n < length) {
				if werr := rc.Flush(); werr != nil {
					return n, werr
				}
			}
		}
		switch {
		case err == nil:
			continue
		case !errors.Is(err, io.EOF):
			return n, err
		case kind == bodyLength && n < length:
			return n, fmt.Errorf("body ended after %d of %d bytes: %w", n, length, io.ErrUnexpectedEOF)
		case kind == bodyChunked:
			return n, x.copyTrailers()
		}
		return n, nil
	}
}

// copyTrailers passes the trailer fields of a chunked body on.
func (x *h2exchange) copyTrailers() error {
	lines, err := readFieldLines(x.u.br, nil, maxChunkLine*4)
	if err != nil {
		return fmt.Errorf("trailer: %w", err)
	}
	hd := x.w.Header()
	for _, line := range lines {
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			return fmt.Errorf("%w: bad trailer line %q", errMalformed, truncate(line))
		}
		hd.Add(http.TrailerPrefix+name, strings.TrimSpace(value))
	}
	return nil
}

// h2body is a request body being relayed to the upstream, on a goroutine
// of its own, while the exchange waits for the response. Each read from
// the client waits at most BodyReadTimeout: a client that stops sending,
// or resets its stream, fails the body and resets the upstream.
type h2body struct {
	done   chan struct{}
	failed chan struct{}
	src    *deadlineReader
	u      *upstream
	n      int64
	err    error
}

func (x *h2exchange) relayBody(h *head) *h2body {
	rc := http.NewResponseController(x.w)
	b := &h2body{done: make(chan struct{}), failed: make(chan struct{}), u: x.u,
		src: &deadlineReader{r: x.r.Body, rc: rc, timeout: x.hc.e.cfg.BodyReadTimeout}}
	u, src := x.u, b.src
	go func() {
		defer close(b.done)
		if h.chunked {
			cw := httputil.NewChunkedWriter(u.bw)
			b.n, b.err = io.Copy(cw, src)
			if b.err == nil {
				cw.Close()
				u.bw.WriteString("\r\n")
			}
			if ferr := u.bw.Flush(); b.err == nil {
				b.err = ferr
			}
		} else {
			b.n, b.err = relay.Copy(u.c, io.LimitReader(src, h.contentLength))
			if b.err == nil && b.n < h.contentLength {
				b.err = fmt.Errorf("body ended after %d of %d bytes: %w", b.n, h.contentLength, io.ErrUnexpectedEOF)
				src.fail(b.err)
			}
		}
		rc.SetReadDeadline(time.Time{})
		if err := src.failure(); err != nil {
			b.err = err
			close(b.failed)
			u.abort()
		}
	}()
	return b
}

// deadlineReader is a request body whose every read waits at most
// timeout; it keeps the first error: the client's.
type deadlineReader struct {
	r       io.Reader
	rc      *http.ResponseController
	timeout time.Duration
	mu      sync.Mutex
	stopped bool
	err     error
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return 0, errBodyStopped
	}
	d.rc.SetReadDeadline(time.Now().Add(d.timeout))
	d.mu.Unlock()
	n, err := d.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		d.fail(err)
	}
	return n, err
}

func (d *deadlineReader) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err == nil && !d.stopped {
		d.err = err
	}
}

func (d *deadlineReader) failure() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// stop makes the next read, and the one waiting, fail.
func (d *deadlineReader) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	d.rc.SetReadDeadline(time.Now())
}

var errBodyStopped = errors.New("request body no longer read: the exchange ended")

// count returns the bytes relayed, once the relay ended.
func (b *h2body) count() int64 {
	if b == nil {
		return 0
	}
	return b.n
}

func (b *h2body) clientFailed() bool {
	if b == nil {
		return false
	}
	select {
	case <-b.failed:
		return true
	default:
		return false
	}
}

// wait waits for the relay to end and returns its error.
func (b *h2body) wait() error {
	if b == nil {
		return nil
	}
	<-b.done
	return b.err
}

// stop ends a relay still running (the exchange failed, or the app
// answered without reading the whole body): the upstream is reset, since
// it holds part of a message, and stop waits for the relay's goroutine.
func (b *h2body) stop() {
	if b == nil {
		return
	}
	select {
	case <-b.done:
		return
	default:
	}
	b.src.stop()
	b.u.abort()
	<-b.done
}

// waitGrace waits up to grace for the relay to end (the app answered
// before reading the whole body); past it, the body is cut.
func (b *h2body) waitGrace(grace time.Duration) error {
	if b == nil {
		return nil
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-b.done:
		return b.err
	case <-t.C:
		b.stop()
		return errors.New("request body not fully sent")
	}
}
