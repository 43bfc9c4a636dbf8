package quictun

import (
	"errors"
	"net"
	"sync"

	"github.com/quic-go/quic-go"
)

// StreamConn adapts a QUIC stream to net.Conn, with half-close: CloseWrite
// sends FIN, CloseRead stops reading, Reset aborts both directions so the
// peer sees an error rather than a clean end.
type StreamConn struct {
	Stream
	conn          Conn
	local, remote net.Addr
	id            SessionID
	transport     string // client side: "dial-back", "relay" or "fast-open"

	// On coordinator's side of a reverse session: the service and its
	// client's request log (see LogRequest).
	service  string
	requests *requestLog

	// awaitAnswer, when set (a fast open), reads coordinator's answer
	// from the stream; the first Read or Peek calls it, once, and every
	// Read and Peek returns its error.
	awaitAnswer func() error
	stopAnswer  func() // stops awaitAnswer's timers when the session ends unread
	answerOnce  sync.Once
	answerErr   error
}

// answer reads coordinator's answer to a fast open, once.
func (c *StreamConn) answer() error {
	c.answerOnce.Do(func() { c.answerErr = c.awaitAnswer() })
	return c.answerErr
}

// Read reads session bytes; for a fast open, after coordinator's answer.
func (c *StreamConn) Read(b []byte) (int, error) {
	if c.awaitAnswer != nil {
		if err := c.answer(); err != nil {
			return 0, err
		}
	}
	return c.Stream.Read(b)
}

// Write writes session bytes. For a fast open refused by coordinator, it
// fails with coordinator's answer (which came before the refusal) rather
// than the stream's reset.
func (c *StreamConn) Write(b []byte) (int, error) {
	n, err := c.Stream.Write(b)
	var se *quic.StreamError
	if err != nil && c.awaitAnswer != nil && errors.As(err, &se) && se.Remote {
		if aerr := c.answer(); aerr != nil {
			return n, aerr
		}
	}
	return n, err
}

// Peek is like Read without consuming.
func (c *StreamConn) Peek(b []byte) (int, error) {
	if c.awaitAnswer != nil {
		if err := c.answer(); err != nil {
			return 0, err
		}
	}
	return c.Stream.Peek(b)
}

func newStreamConn(s Stream, c Conn, id SessionID) *StreamConn {
	return &StreamConn{Stream: s, conn: c, local: c.LocalAddr(), remote: c.RemoteAddr(), id: id}
}

// LogRequest sends the client that exposed the app a record of one HTTP
// request this reverse session carried (flow step 8), filling in the
// session and service. It never blocks; on other streams it does nothing.
func (c *StreamConn) LogRequest(m RequestLog) {
	if c.requests == nil || c.requests.off.Load() {
		return // most clients ask for none: no record is made
	}
	r := m
	r.Session, r.Service = c.id, c.service
	c.requests.add(&r)
}

// Transport says how a client's session reached coordinator:
// "dial-back", "relay" (over the control connection after a failed
// dial-back), "fast-open", "tcp" (over the TCP transport) or "tcp
// fast-open"; "" elsewhere.
func (c *StreamConn) Transport() string { return c.transport }

// SessionID returns the session this stream carries, as hex.
func (c *StreamConn) SessionID() string { return c.id.String() }

// LocalAddr returns the local address of the QUIC connection.
func (c *StreamConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the remote address of the QUIC connection.
func (c *StreamConn) RemoteAddr() net.Addr { return c.remote }

// CloseWrite ends the sending direction with FIN. It is not an error when
// the peer has already closed (STOP_SENDING with CodeOK): it had all it
// wanted.
func (c *StreamConn) CloseWrite() error {
	err := c.Stream.Close()
	if err != nil {
		var se *quic.StreamError
		if _, werr := c.Stream.Write(nil); errors.As(werr, &se) && se.Remote && ErrorCode(se.ErrorCode) == CodeOK {
			return nil
		}
	}
	return err
}

// CloseRead tells the peer to stop sending.
func (c *StreamConn) CloseRead() error {
	c.Stream.CancelRead(quic.StreamErrorCode(CodeOK))
	return nil
}

// Close ends both directions cleanly: FIN for writing (a no-op if already
// sent) and stop reading, telling the peer with CodeOK that nothing more is
// wanted. Reset is the way to abort.
func (c *StreamConn) Close() error {
	if c.stopAnswer != nil {
		c.stopAnswer()
	}
	err := c.Stream.Close()
	c.Stream.CancelRead(quic.StreamErrorCode(CodeOK))
	return err
}

// Reset aborts both directions, so data not yet delivered is reported to
// the peer as an error instead of looking like a clean end of stream.
func (c *StreamConn) Reset() error {
	if c.stopAnswer != nil {
		c.stopAnswer()
	}
	c.Stream.CancelWrite(quic.StreamErrorCode(CodeCanceled))
	c.Stream.CancelRead(quic.StreamErrorCode(CodeCanceled))
	return nil
}

var _ net.Conn = (*StreamConn)(nil)
