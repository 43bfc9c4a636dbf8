package inspector

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Capture wraps conn, the connection to the local app local (exposed as
// service) of one reverse session, so that the HTTP/1.1 requests it
// carries are recorded with their headers and bodies (within the size
// cap). Parsing runs beside the relay and never holds it up: a parser that
// falls behind gives up on the connection (its bytes still flow).
// remote is the public client, session the reverse session (coordinator's
// records name it).
func (in *Inspector) Capture(conn net.Conn, service, local, remote, session string) net.Conn {
	c := &captureConn{Conn: conn, in: in, req: newFeed(&in.captureQueued), resp: newFeed(&in.captureQueued), pending: make(chan pendingReq, 64),
		respDone: make(chan struct{}), service: service, local: local, remote: remote, session: session}
	c.wg.Add(2)
	go c.readRequests()
	go c.readResponses()
	return c
}

// captureConn is a local app's connection whose bytes are copied to two
// parsers: requests (written to the app) and responses (read from it).
type captureConn struct {
	net.Conn
	in                              *Inspector
	req, resp                       *feed
	pending                         chan pendingReq // requests parsed, in order, awaiting their response
	respDone                        chan struct{}
	service, local, remote, session string
	wg                              sync.WaitGroup
	closeOnce                       sync.Once
}

type pendingReq struct {
	id     uint64
	method string
	start  time.Time
}

func (c *captureConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.req.push(b[:n])
	c.in.appUp.add(n)
	return n, err
}

func (c *captureConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.resp.push(b[:n])
	c.in.appDown.add(n)
	if err != nil {
		c.resp.end()
	}
	return n, err
}

// CloseWrite half-closes towards the app, as the relay expects.
func (c *captureConn) CloseWrite() error {
	c.req.end()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// CloseRead stops reading from the app, as the relay may.
func (c *captureConn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return nil
}

// Reset closes the connection with a TCP RST, so that the app learns the
// relay failed (as the relay does with a connection it did not wrap).
func (c *captureConn) Reset() error {
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	return c.Close()
}

// Close closes the connection and waits for the parsers.
func (c *captureConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.req.end()
		c.resp.end()
		c.wg.Wait()
	})
	return err
}

func (c *captureConn) readRequests() {
	defer c.wg.Done()
	defer close(c.pending)
	defer c.req.stop()
	br := bufio.NewReader(c.req)
	for {
		h, err := readHead(br, true)
		if err != nil {
			return
		}
		size, chunked, err := h.bodySize(true, false)
		if err != nil {
			return
		}
		start := time.Now()
		method, host := h.first[0], h.host()
		d := &detail{Local: c.local, ReqHeaders: h.list([2]string{"Host", host})}
		id := c.in.Add(Record{Kind: KindPublic, Time: start, Method: method, Host: host, Path: h.first[1],
			Service: c.service, Client: c.remote, session: c.session, detail: d})
		body, cut, n, err := readBody(br, c.req, size, chunked, c.in.cfg.BodyLimit)
		c.in.update(id, func(r *Record) { r.Up, r.detail.ReqBody, r.detail.ReqCut = n, body, cut })
		select {
		case c.pending <- pendingReq{id, method, start}:
		case <-c.respDone:
			return
		}
		if err != nil {
			return
		}
	}
}

func (c *captureConn) readResponses() {
	defer c.wg.Done()
	defer close(c.respDone)
	defer c.resp.stop()
	br := bufio.NewReader(c.resp)
	for p := range c.pending {
		var h head
		var status int
		var err error
		for {
			// 1xx but 101 are interim: the final response follows.
			if h, err = readHead(br, false); err != nil {
				break
			}
			status, _ = strconv.Atoi(h.first[1])
			if status >= 200 || status == http.StatusSwitchingProtocols {
				break
			}
		}
		var size int64
		var chunked bool
		if err == nil {
			noBody := p.method == http.MethodHead || status == http.StatusSwitchingProtocols ||
				status == http.StatusNoContent || status == http.StatusNotModified
			size, chunked, err = h.bodySize(false, noBody)
		}
		if err != nil {
			c.in.update(p.id, func(r *Record) { r.Outcome, r.Done = "no response", true })
			return
		}
		headers := h.list()
		c.in.update(p.id, func(r *Record) { r.Status, r.detail.RespHeaders = status, headers })
		tunnel := status == http.StatusSwitchingProtocols || p.method == http.MethodConnect && status < 300
		if tunnel {
			size, chunked = 0, false // what follows is not HTTP
		}
		body, cut, n, err := readBody(br, c.resp, size, chunked, c.in.cfg.BodyLimit)
		c.in.update(p.id, func(r *Record) {
			r.Down, r.detail.RespBody, r.detail.RespCut = n, body, cut
			r.Duration = max(r.Duration, ms(time.Since(p.start)))
			r.Done = true
		})
		if err != nil || tunnel {
			return
		}
	}
}

// Bounds on the copies waiting for the parsers: beyond them a parser is
// taken to have fallen behind and the capture of that direction stops (the
// connection's bytes still flow; coordinator's record still lists the
// requests). The relay moves chunks of up to 256 KiB, so without a byte
// bound a lagging parser could hold megabytes per connection.
const (
	feedSlots    = 64       // chunks per direction of a connection
	feedBytes    = 1 << 20  // bytes per direction of a connection
	captureBytes = 32 << 20 // bytes of every capture of an inspector together
)

// feed carries copies of a connection's bytes to a parser. The parser may
// skip what it does not keep (the rest of a body past the size cap): bytes
// not yet pushed are then dropped by push, uncopied, and those queued by
// Read.
type feed struct {
	mu     sync.Mutex
	ch     chan chunk
	ended  bool
	queued int           // bytes in ch
	total  *atomic.Int64 // bytes queued by every feed of the inspector
	pushed int64         // offset in the stream of the next byte pushed
	skipTo int64         // bytes before this offset are not wanted (written by the parser)
	passed chan struct{} // closed when pushed reaches skipTo, or at the end
	// The parser's side.
	buf []byte
	off int64 // offset in the stream of buf[0]
}

// chunk is a copy of bytes pushed, from offset off in the stream.
type chunk struct {
	off int64
	b   []byte
}

func newFeed(total *atomic.Int64) *feed {
	return &feed{ch: make(chan chunk, feedSlots), total: total}
}

func (f *feed) push(b []byte) {
	if len(b) == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ended {
		return
	}
	off := f.pushed
	f.pushed += int64(len(b))
	if f.passed != nil && f.pushed >= f.skipTo {
		close(f.passed)
		f.passed = nil
	}
	if off < f.skipTo {
		d := min(int64(len(b)), f.skipTo-off)
		b, off = b[d:], off+d
		if len(b) == 0 {
			return
		}
	}
	if f.queued+len(b) > feedBytes || f.total.Load()+int64(len(b)) > captureBytes {
		f.ended = true // fallen behind: give up
		close(f.ch)
		return
	}
	select {
	case f.ch <- chunk{off, append([]byte(nil), b...)}:
		f.queued += len(b)
		f.total.Add(int64(len(b)))
	default:
		f.ended = true // fallen behind: give up
		close(f.ch)
	}
}

// taken accounts for a chunk the parser took (or stop dropped).
func (f *feed) taken(c chunk) {
	f.mu.Lock()
	f.queued -= len(c.b)
	f.mu.Unlock()
	f.total.Add(-int64(len(c.b)))
}

// end says no more bytes come.
func (f *feed) end() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.ended {
		f.ended = true
		close(f.ch)
	}
	if f.passed != nil {
		close(f.passed)
		f.passed = nil
	}
}

// stop is end for the parser that quits: the bytes are copied no more, and
// those queued are dropped.
func (f *feed) stop() {
	f.end()
	for c := range f.ch {
		f.taken(c)
	}
}

// skip drops the next n bytes the parser would Read and returns once they
// have gone by (the parser has nothing else to do meanwhile): how many of
// them never came, the feed having ended first.
func (f *feed) skip(n int64) (missing int64) {
	d := min(int64(len(f.buf)), n)
	f.buf, f.off = f.buf[d:], f.off+d
	f.mu.Lock()
	f.skipTo = max(f.skipTo, f.off+n-d)
	passed := f.passed
	if passed == nil && f.pushed < f.skipTo && !f.ended {
		passed = make(chan struct{})
		f.passed = passed
	}
	f.mu.Unlock()
	if passed != nil {
		<-passed
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return max(0, f.skipTo-f.pushed)
}

// Read gives the parser the bytes pushed; io.EOF after end.
func (f *feed) Read(b []byte) (int, error) {
	for len(f.buf) == 0 {
		c, ok := <-f.ch
		if !ok {
			return 0, io.EOF
		}
		f.taken(c)
		// skipTo is the parser's own, as is what Read hands out.
		d := max(0, min(int64(len(c.b)), f.skipTo-c.off))
		f.buf, f.off = c.b[d:], c.off+d
	}
	n := copy(b, f.buf)
	f.buf, f.off = f.buf[n:], f.off+int64(n)
	return n, nil
}
