package coordinator

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"quictunnel/internal/relay"
)

// In a cluster, the public HTTP port reads the head of each new
// connection's first request: when its Host is a name another node's
// client holds, the whole connection (that head and everything after) is
// handed to that node over the inter-node link, whose own HTTP proxy
// serves it as one of its public connections. This node then only
// copies bytes: no HTTP parsing, no request-level proxying. Later
// requests of a keep-alive connection go to the same node (a browser
// keeps one connection per host name); one for a name the other node does
// not hold is proxied on from there, request by request.

const (
	// maxSniffHead bounds the bytes read to find the Host field; a head
	// without one by then is served here (and answered 400 or 431).
	maxSniffHead = 16 << 10
	// sniffTimeout bounds the wait for the first request's head.
	sniffTimeout = 10 * time.Second
)

// sniffListener is the public HTTP listener of a cluster node: Accept
// returns the connections this node serves itself, including those other
// nodes hand over; the others are forwarded as they arrive.
type sniffListener struct {
	net.Listener
	r     *registry
	conns chan net.Conn
	sem   chan struct{} // bounds the connections being read or forwarded
	ctx   context.Context
	wg    sync.WaitGroup
	once  sync.Once
	done  chan struct{}
}

// sniffHTTP wraps ln; max bounds the connections it reads or forwards at
// once (0: 10000).
func (r *registry) sniffHTTP(ctx context.Context, ln net.Listener, max int) *sniffListener {
	if max <= 0 {
		max = DefaultMaxPublicConns
	}
	s := &sniffListener{Listener: ln, r: r, conns: make(chan net.Conn), sem: make(chan struct{}, max), ctx: ctx, done: make(chan struct{})}
	s.wg.Go(s.acceptLoop)
	return s
}

func (s *sniffListener) acceptLoop() {
	defer s.Close()
	for {
		select {
		case s.sem <- struct{}{}:
		case <-s.done:
			return
		}
		c, err := s.Listener.Accept()
		if err != nil {
			<-s.sem
			return
		}
		s.wg.Go(func() {
			defer func() { <-s.sem }()
			s.classify(c)
		})
	}
}

// classify reads c's first head and serves c here or forwards it.
func (s *sniffListener) classify(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(sniffTimeout))
	head, host := readHost(c)
	c.SetReadDeadline(time.Time{})
	pc := &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(head), c)}
	name, ok := s.r.nameOf(host)
	if ok {
		s.r.mu.Lock()
		_, local := s.r.byName[name]
		s.r.mu.Unlock()
		if _, node, _, remote := s.r.cluster.route(name, 0); !local && remote && node.ID != s.r.cluster.cfg.NodeID {
			s.forward(pc, head, name, node)
			return
		}
	}
	s.inject(pc)
}

// inject hands c to the HTTP proxy serving this listener.
func (s *sniffListener) inject(c net.Conn) {
	select {
	case s.conns <- c:
	case <-s.done:
		c.Close()
	}
}

// forward hands the public connection c (whose first bytes, head, are
// read already) to node.
func (s *sniffListener) forward(c *prefixConn, head []byte, name string, node nodeRecord) {
	defer c.Close()
	start := time.Now()
	remote := addrPortOf(c.RemoteAddr())
	str, err := s.r.link.open(s.ctx, node.Addr)
	if err != nil {
		s.r.accessLog.Info("public connection", "kind", "http", "service", name, "client_addr", remote, "node", node.ID,
			"outcome", "unavailable", "err", err)
		return
	}
	up := &remoteConn{streamConn: streamConn{Stream: str, local: s.r.link.Addr(), remote: c.RemoteAddr()}}
	_, err = str.Write(append(appendForwardHeader(nil, forwardHeader{name: name, http: true, remote: remote}), head...))
	if err == nil {
		_, err = up.answer()
	}
	if err != nil {
		up.Close()
		io.WriteString(c, badGateway())
		s.r.accessLog.Info("public connection", "kind", "http", "service", name, "client_addr", remote, "node", node.ID,
			"outcome", "unavailable", "err", err)
		return
	}
	st, err := relay.Splice(s.ctx, &prefixConn{Conn: c.Conn, r: c.Conn}, up)
	attrs := []any{"kind", "http", "service", name, "client_addr", remote, "node", node.ID, "via", "cluster",
		"bytes_in", int64(len(head)) + st.AToB, "bytes_out", st.BToA, "duration", time.Since(start).Round(time.Microsecond)}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	s.r.accessLog.Debug("public connection forwarded", attrs...)
}

// badGateway is the answer to a public connection the owner node did not
// take.
func badGateway() string {
	body := "502 Bad Gateway: the coordinator serving this name cannot be reached\n"
	return "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// Accept implements net.Listener.
func (s *sniffListener) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (s *sniffListener) Close() error {
	s.once.Do(func() { close(s.done) })
	return s.Listener.Close()
}

// wait waits for the connections being read or forwarded.
func (s *sniffListener) wait() { s.wg.Wait() }

// readHost reads from c until the end of the first request's head (or
// maxSniffHead bytes, or an error) and returns what it read and the Host
// field's value ("" if none).
func readHost(c net.Conn) (head []byte, host string) {
	buf := make([]byte, 0, 2048)
	for len(buf) < maxSniffHead {
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):min(cap(buf), maxSniffHead)])
		buf = buf[:len(buf)+n]
		if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
			return buf, hostField(buf[:i])
		}
		if err != nil {
			break
		}
	}
	return buf, ""
}

// hostField finds the Host field in a request head.
func hostField(head []byte) string {
	lines := strings.Split(string(head), "\r\n")
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.EqualFold(strings.TrimSpace(k), "host") {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// prefixConn is a connection whose first bytes were read already: Read
// replays them first.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *prefixConn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return errors.ErrUnsupported
}

// handedConn is a public connection another node handed over: its remote
// address is the public client's.
type handedConn struct {
	*streamConn
	remote net.Addr
}

func (c *handedConn) RemoteAddr() net.Addr { return c.remote }

func tcpAddrOf(ap netip.AddrPort) net.Addr { return net.TCPAddrFromAddrPort(ap) }
