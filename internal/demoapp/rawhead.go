package demoapp

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
)

// Bounds of the request-head recorder.
const (
	// maxRawHead is the largest request head recorded: net/http's default
	// MaxHeaderBytes plus its 4096 bytes of slack. A longer head stops
	// recording on that connection (net/http refuses it anyway).
	maxRawHead = 1<<20 + 4096
	// maxQueuedHeads bounds heads recorded but not yet taken by a handler
	// (pipelined requests). Beyond it recording stops on that connection.
	maxQueuedHeads = 64
	// maxChunkLine bounds a chunk-size or trailer line, as net/http does.
	maxChunkLine = 4096
)

// Header is one header field exactly as the client sent it.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// rawHead is one request head as received.
type rawHead struct {
	method, target string
	headers        []Header
}

// sniffState is where the recorder is in the request stream.
type sniffState int

const (
	stHead      sniffState = iota // reading a request head
	stBody                        // skipping a Content-Length body
	stChunkSize                   // reading a chunk-size line
	stChunkData                   // skipping chunk data
	stChunkEnd                    // reading the CRLF after chunk data
	stTrailer                     // reading trailer lines up to a blank one
	stStopped                     // gave up: upgrade, CONNECT, or a stream net/http would refuse
)

// sniffer follows the bytes a client sends on one HTTP/1.x connection and
// records each request head, using the message framing rules of RFC 9112
// (Content-Length, or Transfer-Encoding: chunked) to skip bodies. Where
// the stream is something net/http would refuse, or stops being HTTP/1.x
// (an upgrade, CONNECT), it stops, and the echo falls back to the parsed
// header. Its zero value is ready; it is safe for concurrent use.
type sniffer struct {
	mu    sync.Mutex
	state sniffState
	buf   []byte // the head or line being read
	left  uint64 // bytes of body or chunk data still to skip
	heads []rawHead
	// upgraded says recording stopped after a CONNECT or Upgrade request.
	upgraded bool
}

// feed processes the next bytes of the stream.
func (s *sniffer) feed(p []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(p) > 0 && s.state != stStopped {
		switch s.state {
		case stBody, stChunkData:
			n := min(uint64(len(p)), s.left)
			p = p[n:]
			s.left -= n
			if s.left == 0 && s.state == stBody {
				s.state = stHead
			} else if s.left == 0 {
				s.state = stChunkEnd
			}
		case stHead:
			if len(s.buf) == 0 && (p[0] == '\r' || p[0] == '\n') {
				p = p[1:] // blank lines before a request line are allowed
				continue
			}
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				s.appendLine(p, maxRawHead)
				return
			}
			s.appendLine(p[:i+1], maxRawHead)
			p = p[i+1:]
			if s.state != stStopped && endsHead(s.buf) {
				s.endHead()
			}
		default: // line states
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				s.appendLine(p, maxChunkLine)
				return
			}
			s.appendLine(p[:i+1], maxChunkLine)
			p = p[i+1:]
			if s.state != stStopped {
				s.endLine()
			}
		}
	}
}

// appendLine adds p to the buffer, stopping if it would pass limit.
func (s *sniffer) appendLine(p []byte, limit int) {
	if len(s.buf)+len(p) > limit {
		s.stop()
		return
	}
	s.buf = append(s.buf, p...)
}

func (s *sniffer) stop() {
	s.state = stStopped
	s.buf = nil
}

// endsHead reports whether b, a head read up to a line end, ends with a
// blank line.
func endsHead(b []byte) bool {
	return bytes.HasSuffix(b, []byte("\n\n")) || bytes.HasSuffix(b, []byte("\n\r\n"))
}

// endHead parses the complete head in s.buf, queues it and sets the state
// for its body.
func (s *sniffer) endHead() {
	h, framing, ok := parseHead(s.buf)
	s.buf = s.buf[:0]
	if !ok || len(s.heads) >= maxQueuedHeads {
		s.stop()
		return
	}
	s.heads = append(s.heads, h)
	switch {
	case framing.stop:
		s.stop()
		s.upgraded = true
	case framing.chunked:
		s.state = stChunkSize
	case framing.length > 0:
		s.state, s.left = stBody, framing.length
	}
}

// endLine handles a complete chunk-size, chunk-end or trailer line.
func (s *sniffer) endLine() {
	line := strings.TrimSuffix(strings.TrimSuffix(string(s.buf), "\n"), "\r")
	s.buf = s.buf[:0]
	switch s.state {
	case stChunkSize:
		if i := strings.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // chunk extensions
		}
		n, err := strconv.ParseUint(strings.TrimRight(line, " \t"), 16, 64)
		switch {
		case err != nil:
			s.stop()
		case n == 0:
			s.state = stTrailer
		default:
			s.state, s.left = stChunkData, n
		}
	case stChunkEnd:
		if line != "" {
			s.stop()
			return
		}
		s.state = stChunkSize
	case stTrailer:
		if line == "" {
			s.state = stHead
		}
	}
}

// framing is how a request's body is delimited.
type framing struct {
	length  uint64
	chunked bool
	stop    bool // no more HTTP/1.x requests follow (CONNECT, Upgrade)
}

// parseHead parses a request head: request line, header fields (obsolete
// line folding joined with a space, as net/http does), blank line. ok is
// false when net/http would refuse the head or its framing.
func parseHead(b []byte) (h rawHead, f framing, ok bool) {
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\r\n"), "\n") {
		l = strings.TrimSuffix(l, "\r")
		if len(lines) > 1 && l != "" && (l[0] == ' ' || l[0] == '\t') {
			lines[len(lines)-1] += " " + strings.Trim(l, " \t")
			continue
		}
		lines = append(lines, l)
	}
	parts := strings.Split(lines[0], " ")
	// net/http takes an empty target for CONNECT (it reads it as an
	// authority).
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" && parts[0] != "CONNECT" {
		return h, f, false
	}
	major, minor, ok := http.ParseHTTPVersion(parts[2])
	if !ok {
		return h, f, false
	}
	h.method, h.target = parts[0], parts[1]
	var te, cl []string
	upgrade := false
	for _, l := range lines[1:] {
		name, value, found := strings.Cut(l, ":")
		if !found || name == "" {
			return h, f, false
		}
		value = strings.Trim(value, " \t")
		h.headers = append(h.headers, Header{Name: name, Value: value})
		switch strings.ToLower(name) {
		case "transfer-encoding":
			te = append(te, value)
		case "content-length":
			cl = append(cl, value)
		case "upgrade":
			upgrade = true
		}
	}
	f.stop = upgrade || h.method == "CONNECT"
	if major == 0 || major == 1 && minor == 0 {
		te = nil // net/http ignores Transfer-Encoding in HTTP/1.0 requests
	}
	switch {
	case len(te) > 0:
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") {
			return h, f, false
		}
		f.chunked = true
	case len(cl) > 0:
		for _, v := range cl[1:] {
			if v != cl[0] {
				return h, f, false
			}
		}
		if cl[0] == "" || strings.Trim(cl[0], "0123456789") != "" {
			return h, f, false
		}
		n, err := strconv.ParseUint(cl[0], 10, 63)
		if err != nil {
			return h, f, false
		}
		f.length = n
	}
	return h, f, true
}

// take returns the recorded head of the request with method and target
// (RequestURI), dropping heads of requests net/http answered without a
// handler (OPTIONS *) that come before it.
func (s *sniffer) take(method, target string) ([]Header, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.heads) > 0 {
		h := s.heads[0]
		s.heads = s.heads[1:]
		if h.method == method && h.target == target {
			return h.headers, true
		}
	}
	return nil, false
}

// recordingListener wraps accepted connections in recordingConns.
type recordingListener struct{ net.Listener }

func (l recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: c}, nil
}

// recordingConn feeds what it reads to a sniffer.
type recordingConn struct {
	net.Conn
	sniff sniffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.sniff.feed(p[:n])
	return n, err
}

// CloseWrite half-closes the connection when the underlying one can, so
// net/http's graceful close still works through the wrapper.
func (c *recordingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// sniffKey is the context key of a connection's *sniffer.
type sniffKey struct{}

// connContext is the http.Server ConnContext that makes the connection's
// recorder reachable from its requests.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if rc, ok := c.(*recordingConn); ok {
		return context.WithValue(ctx, sniffKey{}, &rc.sniff)
	}
	return ctx
}
