package httpproxy

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"quictunnel/internal/relay"
)

// serveConnect opens a tunnel for CONNECT host:port and splices it to the
// client: TLS, HTTP/2, websockets or anything else pass through untouched.
func (c *conn) serveConnect(h *head, start time.Time) {
	c.e.stats.tunnels.Add(1)
	target := h.target
	host, port, err := net.SplitHostPort(target)
	if p, perr := strconv.ParseUint(port, 10, 16); err != nil || host == "" || perr != nil || p == 0 {
		c.writeError(http.StatusBadRequest, fmt.Sprintf("CONNECT needs host:port, got %q", truncate(target)))
		c.accessLog(start, h.method, target, 0, 0, "", errMalformed)
		return
	}
	r, err := c.e.router.connect(c.ctx, target)
	if err != nil {
		c.writeError(http.StatusMethodNotAllowed, err.Error())
		c.accessLog(start, h.method, target, 0, 0, "", err)
		return
	}
	nc, err := r.dial(c.ctx)
	if err != nil {
		status, reason := statusOf(target, err)
		c.writeError(status, reason)
		c.accessLog(start, h.method, target, 0, 0, "", err)
		return
	}
	var line [64]byte
	c.bw.Write(c.appendStatusLine(line[:0], http.StatusOK, "Connection established"))
	c.bw.WriteString("\r\n")
	if err := c.bw.Flush(); err != nil {
		nc.Close()
		c.accessLog(start, h.method, target, 0, 0, sessionOf(nc), err)
		return
	}
	client := unbuffered(c.c, c.br)
	if client == c.c {
		c.releaseBuffers() // an idle tunnel holds no proxy buffers
	}
	st, err := relay.Splice(c.ctx, client, nc)
	c.accessLog(start, h.method, target, st.AToB, st.BToA, sessionOf(nc), err)
}
