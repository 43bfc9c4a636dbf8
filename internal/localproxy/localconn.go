package localproxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"quictunnel/httpproxy"
	"quictunnel/internal/inspector"
)

// localConn is a browser session to a localhost name, dialed on this
// computer's loopback rather than through the tunnel: it counts its bytes
// and records its requests (absolute-form) or itself (CONNECT) in the
// inspector, as trackedConn does for tunnel sessions. It embeds the TCP
// connection, so the relay's CloseWrite and the kernel's splice
// (ReadFrom, WriteTo) still apply.
type localConn struct {
	*net.TCPConn
	ins      *inspector.Inspector
	target   string
	start    time.Time
	up, down atomic.Int64 // up: towards the target
	reported atomic.Bool  // httpproxy reported requests: not a tunnel
	gone     sync.Once
}

// transportDirect is the inspector's transport for a localhost target.
const transportDirect = "direct"

func (c *localConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	c.down.Add(int64(n))
	return n, err
}

func (c *localConn) Write(b []byte) (int, error) {
	n, err := c.TCPConn.Write(b)
	c.up.Add(int64(n))
	return n, err
}

func (c *localConn) ReadFrom(r io.Reader) (int64, error) {
	n, err := c.TCPConn.ReadFrom(r)
	c.up.Add(n)
	return n, err
}

func (c *localConn) WriteTo(w io.Writer) (int64, error) {
	n, err := c.TCPConn.WriteTo(w)
	c.down.Add(n)
	return n, err
}

func (c *localConn) Close() error {
	c.gone.Do(c.end)
	return c.TCPConn.Close()
}

// ReportRequest records one absolute-form request sent over the
// connection (httpproxy calls it).
func (c *localConn) ReportRequest(r httpproxy.RequestRecord) {
	c.reported.Store(true)
	c.ins.Add(requestRecord(r, transportDirect))
}

// end records a tunnel (CONNECT) when it closes.
func (c *localConn) end() {
	if !c.reported.Load() {
		c.ins.Add(tunnelRecord(c.target, c.start, c.up.Load(), c.down.Load(), transportDirect))
	}
}
