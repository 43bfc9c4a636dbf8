package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"quictunnel/internal/relay"
)

// engine is the HTTP/1.1 machinery both proxies share: it accepts
// connections, reads request heads and relays each exchange to the
// upstream a router picks, keeping header lines byte for byte.
type engine struct {
	cfg    Config
	log    *slog.Logger
	router router
	auth   *BasicAuth // Proxy-Authorization required; nil: none
	h2     *h2Server  // serves TLS connections that negotiated "h2"

	ctx    context.Context // cancelled by close: ends every connection
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	conns    map[net.Conn]bool // true while waiting for the next request
	closed   bool
	draining bool
	drained  chan struct{} // closed when the last connection ends, while draining

	stats counters

	// slots holds a token per open connection when MaxConns bounds them.
	slots   chan struct{}
	fullLog atomic.Int64 // unix nanoseconds of the last "at the bound" warning

	// Client connections' buffers, reused: a CONNECT gives them back as
	// soon as its tunnel is up, so idle tunnels hold none.
	readers, writers sync.Pool
	// copyBufs holds the buffers HTTP/2 responses' bodies are copied
	// through (*[]byte).
	copyBufs sync.Pool
}

// router decides where a request goes.
type router interface {
	route(ctx context.Context, h *head, client net.Conn) (*route, error)
	// connect routes a CONNECT request, or refuses it with an error.
	connect(ctx context.Context, target string) (*route, error)
}

// route is one request's upstream.
type route struct {
	key        string   // upstream connections are reused while it stays the same
	target     string   // for logs
	requestURI string   // request-target sent upstream
	addHost    string   // Host value to add when the request has none
	drop       []string // names of fields not to forward
	extra      []string // fields to add, as header lines
	dial       func(ctx context.Context) (net.Conn, error)
}

// httpError answers a request directly.
type httpError struct {
	status int
	reason string
}

func (e *httpError) Error() string { return fmt.Sprintf("%d %s", e.status, e.reason) }

type counters struct {
	requests, tunnels, active, bytesUp, bytesDown atomic.Int64
	connLimitWaits                                atomic.Int64
	mu                                            sync.Mutex
	byStatus                                      map[int]int64
}

// Stats is a snapshot of a proxy's counters. Up is browser→target.
type Stats struct {
	Requests, Tunnels, ActiveConns int64
	// ConnLimitWaits counts the times accepting waited for a connection
	// to close (MaxConns).
	ConnLimitWaits     int64
	BytesUp, BytesDown int64
	ByStatus           map[int]int64 // responses the proxy itself generated or relayed
}

func newEngine(cfg Config, r router) *engine {
	ctx, cancel := context.WithCancel(context.Background())
	e := &engine{cfg: cfg, log: cfg.Logger, router: r, ctx: ctx, cancel: cancel,
		lns: map[net.Listener]struct{}{}, conns: map[net.Conn]bool{}, h2: newH2Server(&cfg)}
	if cfg.MaxConns > 0 {
		e.slots = make(chan struct{}, cfg.MaxConns)
	}
	return e
}

// serve accepts connections on ln until close.
func (e *engine) serve(ln net.Listener) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		ln.Close()
		return net.ErrClosed
	}
	e.lns[ln] = struct{}{}
	e.wg.Add(1)
	e.mu.Unlock()
	defer e.wg.Done()
	for {
		if !e.takeSlot() {
			return nil
		}
		c, err := ln.Accept()
		if err != nil {
			e.releaseSlot()
			if e.ctx.Err() != nil || e.isDraining() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		if !e.track(c) {
			c.Close()
			e.releaseSlot()
			return nil
		}
		go func() {
			defer e.wg.Done()
			defer e.untrack(c)
			e.serveConn(c)
		}()
	}
}

// track registers c; it reports false once the engine is closed.
func (e *engine) track(c net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || e.draining {
		return false
	}
	e.conns[c] = false
	e.wg.Add(1)
	e.stats.active.Add(1)
	return true
}

// takeSlot waits for room for one more connection (MaxConns); it reports
// false when the engine closes first.
func (e *engine) takeSlot() bool {
	if e.slots == nil {
		return true
	}
	select {
	case e.slots <- struct{}{}:
		return true
	default:
	}
	e.stats.connLimitWaits.Add(1)
	if now, last := time.Now().UnixNano(), e.fullLog.Load(); now-last >= int64(time.Minute) && e.fullLog.CompareAndSwap(last, now) {
		e.log.Warn("connection limit reached: new connections wait until one closes", "max_conns", e.cfg.MaxConns)
	}
	select {
	case e.slots <- struct{}{}:
		return true
	case <-e.ctx.Done():
		return false
	}
}

func (e *engine) releaseSlot() {
	if e.slots != nil {
		<-e.slots
	}
}

func (e *engine) untrack(c net.Conn) {
	defer e.releaseSlot()
	c.Close()
	e.mu.Lock()
	delete(e.conns, c)
	if len(e.conns) == 0 && e.drained != nil {
		close(e.drained)
		e.drained = nil
	}
	e.mu.Unlock()
	e.stats.active.Add(-1)
}

func (e *engine) isDraining() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.draining
}

// setIdle marks c as waiting for its next request (or not). It reports
// false when c should rather close because the engine is draining.
func (e *engine) setIdle(c net.Conn, idle bool) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if idle && e.draining {
		return false
	}
	e.conns[c] = idle
	return true
}

// drain stops accepting, closes connections waiting for a request and
// lets the others finish their exchange or tunnel; it returns when none
// is left, or with ctx's error. close still ends what remains.
func (e *engine) drain(ctx context.Context) error {
	e.mu.Lock()
	e.draining = true
	for ln := range e.lns {
		ln.Close()
	}
	e.h2.goAway()
	for c, idle := range e.conns {
		if idle {
			c.Close()
		}
	}
	if len(e.conns) == 0 {
		e.mu.Unlock()
		return nil
	}
	if e.drained == nil {
		e.drained = make(chan struct{})
	}
	done := e.drained
	n := len(e.conns)
	e.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d connections still open: %w", n, context.Cause(ctx))
	}
}

// close stops every listener and connection and waits for them.
func (e *engine) close() error {
	e.cancel() // first, so serve sees the listener closed on purpose
	e.mu.Lock()
	e.closed = true
	for ln := range e.lns {
		ln.Close()
	}
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
	return nil
}

func (e *engine) snapshot() Stats {
	s := &e.stats
	st := Stats{Requests: s.requests.Load(), Tunnels: s.tunnels.Load(), ActiveConns: s.active.Load(), ConnLimitWaits: s.connLimitWaits.Load(),
		BytesUp: s.bytesUp.Load(), BytesDown: s.bytesDown.Load(), ByStatus: map[int]int64{}}
	s.mu.Lock()
	for k, v := range s.byStatus {
		st.ByStatus[k] = v
	}
	s.mu.Unlock()
	return st
}

func (e *engine) countStatus(code int) {
	e.stats.mu.Lock()
	if e.stats.byStatus == nil {
		e.stats.byStatus = map[int]int64{}
	}
	e.stats.byStatus[code]++
	e.stats.mu.Unlock()
}

// conn is one client connection.
type conn struct {
	e       *engine
	c       net.Conn
	rd      *connReader // what br reads
	br      *bufio.Reader
	bw      *bufio.Writer
	ctx     context.Context // ends when the connection is done
	up      *upstream       // reused while the route key stays the same
	scratch []byte          // where heads are built, reused from one to the next
	// status is the status of the last final response head written to
	// the client for the request being served, 0 before one is: what the
	// access log records (see appendStatusLine).
	status int
}

// connReader is what a client connection's buffered reader reads: the
// connection itself, but while a request body is relayed (timeout set)
// each read first moves the read deadline timeout ahead, so a client that
// stops sending is noticed, and the first error is kept: the client's.
type connReader struct {
	c       net.Conn
	timeout time.Duration // BodyReadTimeout while a body is read; 0 otherwise
	err     error         // the first read error while timeout was set
}

func (r *connReader) Read(p []byte) (int, error) {
	if r.timeout <= 0 {
		return r.c.Read(p)
	}
	r.c.SetReadDeadline(time.Now().Add(r.timeout))
	n, err := r.c.Read(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

// upstream is an open connection to a target.
type upstream struct {
	key     string
	c       net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	session string
}

func (u *upstream) close() {
	if u != nil {
		u.c.Close()
	}
}

// abort resets the connection: the exchange on it was cut, and the other
// end must not take what it got for a whole message.
func (u *upstream) abort() {
	if u != nil {
		relay.Reset(u.c)
	}
}

// connBufferSize is the size of the buffered reader and writer on each
// side of a connection. Heads pass through them, but a longer line is read
// in pieces (readLine) and a large body bypasses them, so they need not be
// big: 8 KiB each keeps 64 busy keep-alive clients to a few MiB.
const connBufferSize = 8 << 10

// serveConn reads requests from c until it closes or asks to.
func (e *engine) serveConn(nc net.Conn) {
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	c := &conn{e: e, c: nc, rd: &connReader{c: nc}, ctx: ctx}
	c.br, c.bw = e.reader(c.rd), e.writer(nc)
	defer func() { c.up.close(); c.releaseBuffers() }()
	if tc, ok := nc.(*tls.Conn); ok {
		tc.SetReadDeadline(time.Now().Add(e.cfg.ReadHeaderTimeout))
		err := tc.HandshakeContext(ctx)
		tc.SetReadDeadline(time.Time{})
		if err != nil {
			c.headError(err)
			return
		}
		if tc.ConnectionState().NegotiatedProtocol == http2.NextProtoTLS {
			c.releaseBuffers()
			e.serveH2(ctx, tc)
			return
		}
	}
	for first := true; ; first = false {
		h, err := c.readHead(first)
		if err != nil {
			c.headError(err)
			return
		}
		if !c.serveRequest(h) {
			return
		}
	}
}

// readHead waits for the next request: up to IdleTimeout for its first
// byte (between requests), then ReadHeaderTimeout for the rest.
func (c *conn) readHead(first bool) (*head, error) {
	cfg := &c.e.cfg
	if !first {
		if !c.e.setIdle(c.c, true) {
			return nil, errIdle // draining: no more requests on this connection
		}
		c.c.SetReadDeadline(time.Now().Add(cfg.IdleTimeout))
		err := c.waitIdle()
		c.e.setIdle(c.c, false)
		if err != nil {
			return nil, errIdle
		}
	}
	c.c.SetReadDeadline(time.Now().Add(cfg.ReadHeaderTimeout))
	h, err := parseRequestHead(c.br, cfg.MaxHeaderBytes)
	c.c.SetReadDeadline(time.Time{})
	return h, err
}

var errIdle = errors.New("idle")

// looksLikeHTTP reports whether the first bytes a TLS listener received
// are the start of a plain HTTP request.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "PATCH":
		return true
	}
	return false
}

// reader and writer take a connection buffer from the pools.
func (e *engine) reader(r io.Reader) *bufio.Reader {
	br, _ := e.readers.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(nil, connBufferSize)
	}
	br.Reset(r)
	return br
}

func (e *engine) writer(w io.Writer) *bufio.Writer {
	bw, _ := e.writers.Get().(*bufio.Writer)
	if bw == nil {
		bw = bufio.NewWriterSize(nil, connBufferSize)
	}
	bw.Reset(w)
	return bw
}

func (e *engine) putReader(br *bufio.Reader) {
	br.Reset(nil)
	e.readers.Put(br)
}

func (e *engine) putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	e.writers.Put(bw)
}

// waitIdle waits for the first byte of the next request on a keep-alive
// connection. When no buffer holds data, it gives the buffers of both
// sides back while it waits (in the netpoller, see waitReadable): an idle
// keep-alive connection, of which browsers keep many, then holds no 32 KiB
// of buffers, only its sockets and goroutine.
func (c *conn) waitIdle() error {
	u := c.up
	parkUp := u != nil && u.br.Buffered() == 0 && u.bw.Buffered() == 0
	if c.br.Buffered() > 0 || c.bw.Buffered() > 0 || !canWaitReadable(c.c) {
		_, err := c.br.Peek(1)
		return err
	}
	c.e.putReader(c.br)
	c.e.putWriter(c.bw)
	if parkUp {
		c.e.putReader(u.br)
		c.e.putWriter(u.bw)
	}
	_, err := waitReadable(c.c)
	c.br, c.bw = c.e.reader(c.rd), c.e.writer(c.c)
	if parkUp {
		u.br, u.bw = c.e.reader(u.c), c.e.writer(u.c)
	}
	if err != nil {
		return err
	}
	_, err = c.br.Peek(1)
	return err
}

// releaseBuffers gives c's buffers back to the engine; c reads and writes
// no more through them. Every goroutine using them (a request body's) has
// ended by then.
func (c *conn) releaseBuffers() {
	c.scratch = nil
	if c.br != nil {
		c.e.putReader(c.br)
	}
	if c.bw != nil {
		c.e.putWriter(c.bw)
	}
	c.br, c.bw = nil, nil
}

// headError answers a request head that could not be read, if the client
// is still there to read the answer.
func (c *conn) headError(err error) {
	var rhe tls.RecordHeaderError
	switch {
	case errors.As(err, &rhe) && rhe.Conn != nil && looksLikeHTTP(rhe.RecordHeader):
		// Plain HTTP to a TLS listener: say so, in plain text, as
		// net/http does (the handshake never happened).
		c.e.countStatus(http.StatusBadRequest) // never logged: no request was read
		rhe.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		io.WriteString(rhe.Conn, "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"+
			"400 Bad Request: this port speaks HTTPS; use https:// in the URL\n")
	case errors.Is(err, errHeadTooLarge):
		c.writeError(http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request header block exceeds %d bytes", c.e.cfg.MaxHeaderBytes))
	case errors.Is(err, errMalformed):
		c.writeError(http.StatusBadRequest, err.Error())
	}
}

// writeError sends a short text/plain error response and marks the
// connection for closing.
func (c *conn) writeError(status int, reason string) {
	var line [64]byte
	c.bw.Write(c.appendStatusLine(line[:0], status, http.StatusText(status)))
	body := fmt.Sprintf("%d %s: %s\n", status, http.StatusText(status), reason)
	fmt.Fprintf(c.bw, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		len(body), body)
	c.bw.Flush()
}

// redirect answers with a redirect to location and marks the connection
// for closing.
func (c *conn) redirect(status int, location string) {
	var line [64]byte
	c.bw.Write(c.appendStatusLine(line[:0], status, http.StatusText(status)))
	body := fmt.Sprintf("%d %s: %s\n", status, http.StatusText(status), location)
	fmt.Fprintf(c.bw, "Location: %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		location, len(body), body)
	c.bw.Flush()
}

// appendStatusLine appends the status line of a response to the client
// and, for a final one (not an interim 1xx), records its status for the
// access log and counts it. Every response to a request starts here, so
// the log and the counters show the status the client got, never one
// chosen apart from the one written.
func (c *conn) appendStatusLine(b []byte, status int, reason string) []byte {
	if status >= 200 || status == http.StatusSwitchingProtocols {
		c.status = status
		c.e.countStatus(status)
	}
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, reason...)
	return append(b, "\r\n"...)
}

// accessLog writes the line for one request or tunnel, with the status
// last sent (0: none), and returns its outcome: "ok", "canceled" or the
// error.
func (c *conn) accessLog(start time.Time, method, target string, up, down int64, session string, err error) string {
	return c.e.logRequest(logEntry{client: c.c, proto: "HTTP/1.1", method: method, target: target, status: c.status,
		up: up, down: down, session: session, start: start}, err)
}

// logEntry is what an access-log line says of one request or tunnel.
type logEntry struct {
	client         net.Conn // the public client's connection
	proto          string   // the client's protocol: HTTP/1.1 or HTTP/2.0
	method, target string
	status         int // the status sent, 0: none
	up, down       int64
	session        string
	start          time.Time
	canceled       bool // the client left (an HTTP/2 stream it reset)
}

// logRequest writes the access-log line of one request or tunnel, adds
// its bytes to the counters and returns its outcome: "ok", "canceled" or
// the error.
func (e *engine) logRequest(l logEntry, err error) string {
	attrs := make([]slog.Attr, 0, 13)
	attrs = append(attrs,
		slog.String("client", l.client.RemoteAddr().String()), slog.String("method", l.method), slog.String("target", l.target),
		slog.Int("status", l.status), slog.Int64("bytes_up", l.up), slog.Int64("bytes_down", l.down),
		slog.Duration("duration", time.Since(l.start).Round(time.Microsecond)),
	)
	if l.session != "" {
		attrs = append(attrs, slog.String("session", l.session))
	}
	if _, ok := l.client.(*tls.Conn); ok {
		attrs = append(attrs, slog.Bool("tls", true)) // the client's connection: a public HTTPS port
	}
	outcome := "ok"
	switch {
	case err == nil:
	case clientGone(err) || l.canceled:
		outcome = "canceled"
		attrs = append(attrs, slog.String("err", err.Error()))
	default:
		outcome = err.Error()
	}
	// proto last: the fields before it are as they were before HTTP/2.
	attrs = append(attrs, slog.String("outcome", outcome), slog.String("proto", l.proto))
	e.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
	e.stats.bytesUp.Add(l.up)
	e.stats.bytesDown.Add(l.down)
	return outcome
}

// sessionOf returns the tunnel session id of an upstream, if it has one.
func sessionOf(nc net.Conn) string {
	if s, ok := nc.(interface{ SessionID() string }); ok {
		return s.SessionID()
	}
	return ""
}
