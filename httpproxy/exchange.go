package httpproxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"quictunnel/internal/relay"
)

// requestBodyGrace is how long a finished response waits for the request
// body still being relayed before both connections are closed (the target
// answered without reading the whole body, e.g. a 413 or a refused
// Expect: 100-continue).
const requestBodyGrace = time.Second

// serveRequest handles one request; it reports whether the connection may
// carry another.
func (c *conn) serveRequest(h *head) bool {
	start := time.Now()
	c.status = 0
	c.e.stats.requests.Add(1)
	if c.e.cfg.PAC != "" && h.method == "GET" && h.target == "/proxy.pac" {
		c.servePAC(h, start) // browsers fetch it before they know any credentials
		return !h.close
	}
	if c.e.auth != nil && !c.e.auth.allows(h, "Proxy-Authorization") {
		c.askForCredentials(h, start)
		return false
	}
	if c.e.cfg.Status != nil && h.method == "GET" && h.target == "/status" {
		c.serveLocal(h, start, "application/json", c.e.cfg.Status())
		return !h.close
	}
	if h.method == "CONNECT" {
		c.serveConnect(h, start)
		return false
	}
	r, err := c.e.router.route(c.ctx, h, c.c)
	if ar := (*authRequired)(nil); errors.As(err, &ar) {
		c.askForAppCredentials(h, ar.target, ar.realm, start)
		return false
	}
	if rd := (*redirectToHTTPS)(nil); errors.As(err, &rd) {
		c.redirect(http.StatusPermanentRedirect, rd.location)
		c.accessLog(start, h.method, h.target, 0, 0, "", rd)
		return false
	}
	if err != nil {
		status, reason := statusOf(h.target, err)
		var he *httpError
		if errors.As(err, &he) {
			status, reason = he.status, he.reason
		}
		c.writeError(status, reason)
		c.accessLog(start, h.method, h.target, 0, 0, "", err)
		return false
	}
	keep, err := c.exchange(h, r, start)
	if err != nil && c.up != nil {
		c.up.abort()
		c.up = nil
	}
	return keep && err == nil
}

// exchange relays one request and its response over the route's upstream.
func (c *conn) exchange(h *head, r *route, start time.Time) (keep bool, err error) {
	var up, down int64
	defer func() {
		outcome := c.accessLog(start, h.method, r.target, up, down, c.session(), err)
		if c.up == nil {
			return
		}
		if rr, ok := c.up.c.(RequestReporter); ok {
			_, isTLS := c.c.(*tls.Conn)
			rr.ReportRequest(RequestRecord{Client: addrPortOf(c.c.RemoteAddr()), Method: h.method, Target: r.target, Status: c.status,
				Up: up, Down: down, Duration: time.Since(start), TLS: isTLS, Outcome: outcome})
		}
	}()

	fresh, err := c.upstreamFor(r)
	if err != nil {
		status, reason := statusOf(r.key, err)
		c.writeError(status, reason)
		return false, err
	}
	u := c.up
	if err := c.writeRequestHead(h, r); err != nil {
		var de *DialError
		switch {
		case errors.As(err, &de):
			// A Dialer that answers before reaching the target (fast
			// open, an early reverse session) reports the failure here.
			c.writeError(de.Status, de.Reason)
			return false, err
		case fresh || h.requestHasBody():
			c.writeError(http.StatusBadGateway, fmt.Sprintf("sending the request to %s failed: %v", r.key, err))
			return false, err
		}
		// A reused connection the target had already closed: once more.
		if _, err = c.redial(r); err != nil {
			status, reason := statusOf(r.key, err)
			c.writeError(status, reason)
			return false, err
		}
		u = c.up
		if err := c.writeRequestHead(h, r); err != nil {
			c.writeError(http.StatusBadGateway, fmt.Sprintf("sending the request to %s failed: %v", r.key, err))
			return false, err
		}
	}

	var body *requestBody
	if h.requestHasBody() {
		body = c.relayBody(h, u)
	}
	waitBody := func(grace time.Duration) error {
		if body == nil {
			return nil
		}
		b := body
		body = nil
		if !b.wait(grace) {
			c.c.Close() // unblocks the reader; the connection cannot be reused
			u.abort()
			<-b.done
			b.err = errors.Join(b.err, errors.New("request body not fully sent"))
		}
		up = b.n
		return b.err
	}
	defer waitBody(0)

	resp, err := c.readFinalResponse(h, u)
	if err != nil && body.clientFailed() {
		// The client stopped sending its body, left or sent a malformed
		// one: the body's relay reset the upstream to end the wait.
		b := body
		waitBody(0)
		err = c.answerBodyFailure(b)
		return false, err
	}
	if err != nil && !fresh && body == nil && isEOF(err) {
		// The target closed the idle connection we reused before reading
		// our request: send it once more on a new one.
		if _, err = c.redial(r); err == nil {
			u = c.up
			if err = c.writeRequestHead(h, r); err == nil {
				resp, err = c.readFinalResponse(h, u)
			}
		}
	}
	if err != nil {
		var de *DialError
		if errors.As(err, &de) {
			// A Dialer that answers before reaching the target (fast
			// open) reports the failure here.
			c.writeError(de.Status, de.Reason)
		} else {
			c.writeError(http.StatusBadGateway, fmt.Sprintf("bad response from %s: %v", r.key, err))
		}
		waitBody(0)
		return false, err
	}

	if resp.status == http.StatusSwitchingProtocols {
		if !h.upgrade {
			c.writeError(http.StatusBadGateway, fmt.Sprintf("%s switched protocols without being asked to", r.key))
			return false, fmt.Errorf("%w: 101 without an upgrade request", errMalformed)
		}
		// The splice reads the client's buffered reader next: the request
		// body, if any, must be through first.
		if err := waitBody(requestBodyGrace); err != nil {
			return false, fmt.Errorf("request body: %w", err)
		}
		c.writeResponseHead(resp, false, true)
		if err := c.bw.Flush(); err != nil {
			return false, err
		}
		c.up = nil // the connection now belongs to the splice
		st, err := relay.Splice(c.ctx, unbuffered(c.c, c.br), unbuffered(u.c, u.br))
		up, down = st.AToB, st.BToA
		return false, err
	}

	kind := resp.responseBody(h.method)
	closeAfter := h.close || resp.close || kind == bodyUntilClose
	c.writeResponseHead(resp, closeAfter, false)
	length := resp.contentLength
	if kind == bodyLength {
		// The part of the body that came in with the head goes out in the
		// same write as the head, when it fits: one write(2) for a small
		// response instead of two.
		if n := min(length, int64(u.br.Buffered())); n > 0 && n <= int64(c.bw.Available()) {
			b, _ := u.br.Peek(int(n))
			c.bw.Write(b)
			u.br.Discard(int(n))
			length -= n
			down = n
		}
	}
	if err := c.bw.Flush(); err != nil {
		return false, err
	}
	rest, err := copyBody(kind, length, c.c, c.bw, u.br)
	down += rest
	if err != nil && body.clientFailed() {
		return false, fmt.Errorf("request body: %w", waitBody(0))
	}
	if err != nil {
		return false, fmt.Errorf("response body: %w", err)
	}
	if err := waitBody(requestBodyGrace); err != nil {
		return false, fmt.Errorf("request body: %w", err)
	}
	if resp.close || kind == bodyUntilClose || h.upgrade {
		c.up.close()
		c.up = nil
	}
	return !closeAfter, nil
}

// upstreamFor makes c.up an upstream for r, reusing the current one when
// r goes to the same place. It reports whether the upstream is new.
func (c *conn) upstreamFor(r *route) (bool, error) {
	if c.up != nil && c.up.key == r.key {
		return false, nil
	}
	return c.redial(r)
}

func (c *conn) redial(r *route) (bool, error) {
	c.up.close()
	c.up = nil
	nc, err := r.dial(c.ctx)
	if err != nil {
		return true, err
	}
	c.up = &upstream{key: r.key, c: nc, br: c.e.reader(nc), bw: c.e.writer(nc), session: sessionOf(nc)}
	return true, nil
}

func (c *conn) session() string {
	if c.up != nil {
		return c.up.session
	}
	return ""
}

// writeRequestHead sends the request line and fields upstream: the
// request-target rewritten, hop-by-hop fields dropped, every other line as
// received, in order.
func (c *conn) writeRequestHead(h *head, r *route) error {
	c.scratch = appendRequestHead(c.scratch[:0], h, r)
	if _, err := c.up.bw.Write(c.scratch); err != nil {
		return err
	}
	return c.up.bw.Flush()
}

// appendRequestHead appends the head of h as sent upstream on route r.
func appendRequestHead(b []byte, h *head, r *route) []byte {
	b = append(b, h.method...)
	b = append(b, ' ')
	b = append(b, r.requestURI...)
	b = append(b, " HTTP/1.1\r\n"...)
	var keep []string
	if te, ok := h.get("TE"); ok && strings.EqualFold(te, "trailers") {
		keep = append(keep, "te")
	}
	if h.upgrade {
		keep = append(keep, "upgrade")
	}
	b = h.appendFields(b, keep, r.drop)
	if _, ok := h.get("Host"); !ok && r.addHost != "" {
		b = append(b, "Host: "...)
		b = append(b, r.addHost...)
		b = append(b, "\r\n"...)
	}
	for _, line := range r.extra {
		b = append(b, line...)
		b = append(b, "\r\n"...)
	}
	switch {
	case h.upgrade:
		b = append(b, "Connection: Upgrade\r\n"...)
	case h.minor == 0 && !h.close:
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	return append(b, "\r\n"...)
}

// readFinalResponse reads response heads, relaying 1xx interim responses
// (100 Continue, 103 Early Hints) to the client, until the final one or a
// 101.
func (c *conn) readFinalResponse(h *head, u *upstream) (*head, error) {
	if t := c.e.cfg.ResponseHeaderTimeout; t > 0 {
		u.c.SetReadDeadline(time.Now().Add(t))
		defer u.c.SetReadDeadline(time.Time{})
	}
	for {
		resp, err := parseResponseHead(u.br, c.e.cfg.MaxHeaderBytes)
		if err != nil {
			return nil, err
		}
		if resp.status/100 != 1 || resp.status == http.StatusSwitchingProtocols {
			return resp, nil
		}
		c.writeResponseHead(resp, false, false)
		if err := c.bw.Flush(); err != nil {
			return nil, err
		}
	}
}

// writeResponseHead buffers a response head for the client: status line,
// fields as received minus hop-by-hop ones, and our own Connection field.
func (c *conn) writeResponseHead(resp *head, closeAfter, upgrade bool) {
	b := c.appendStatusLine(c.scratch[:0], resp.status, resp.reason)
	var keep []string
	if upgrade {
		keep = []string{"upgrade"}
	}
	b = resp.appendFields(b, keep, nil)
	switch {
	case upgrade:
		b = append(b, "Connection: Upgrade\r\n"...)
	case closeAfter:
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	c.scratch = b
	c.bw.Write(b)
}

// servePAC answers /proxy.pac.
func (c *conn) servePAC(h *head, start time.Time) {
	c.serveLocal(h, start, "application/x-ns-proxy-autoconfig", []byte(c.e.cfg.PAC))
}

// serveLocal answers a request for the proxy's own pages with body.
func (c *conn) serveLocal(h *head, start time.Time, contentType string, body []byte) {
	var line [64]byte
	c.bw.Write(c.appendStatusLine(line[:0], http.StatusOK, "OK"))
	fmt.Fprintf(c.bw, "Content-Type: %s\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n", contentType, len(body))
	c.bw.Write(body)
	c.bw.Flush()
	c.accessLog(start, h.method, h.target, 0, int64(len(body)), "", nil)
}

// isEOF reports whether err says the peer closed before sending anything.
func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// unbuffered returns nc itself when r holds none of its bytes (the usual
// case: the client waits for the answer before sending more), so a relay
// reads nc directly and holds no buffer while idle; otherwise a
// bufferedConn that drains r first.
func unbuffered(nc net.Conn, r *bufio.Reader) net.Conn {
	if r.Buffered() == 0 {
		return nc
	}
	return &bufferedConn{Conn: nc, r: r}
}

// bufferedConn is a connection whose first bytes were already read into a
// bufio.Reader: reads drain that buffer first. It passes half-close and
// reset through to the connection.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the underlying connection when it can.
func (b *bufferedConn) CloseWrite() error {
	if cw, ok := b.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return b.Conn.Close()
}

// CloseRead stops reading the underlying connection when it can.
func (b *bufferedConn) CloseRead() error {
	if cr, ok := b.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return nil
}

// Reset aborts the underlying connection so its peer sees an error.
func (b *bufferedConn) Reset() error {
	switch c := b.Conn.(type) {
	case interface{ Reset() error }:
		return c.Reset()
	case *net.TCPConn:
		c.SetLinger(0)
	}
	return b.Conn.Close()
}
