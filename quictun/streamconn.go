package quictun

import (
	"errors"
	"net"

	"github.com/quic-go/quic-go"
)

// StreamConn adapts a QUIC stream to net.Conn, with half-close: CloseWrite
// sends FIN, CloseRead stops reading, Reset aborts both directions so the
// peer sees an error rather than a clean end.
type StreamConn struct {
	*quic.Stream
	conn          *quic.Conn
	local, remote net.Addr
	id            SessionID
}

func newStreamConn(s *quic.Stream, c *quic.Conn, id SessionID) *StreamConn {
	return &StreamConn{Stream: s, conn: c, local: c.LocalAddr(), remote: c.RemoteAddr(), id: id}
}

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
	err := c.Stream.Close()
	c.Stream.CancelRead(quic.StreamErrorCode(CodeOK))
	return err
}

// Reset aborts both directions, so data not yet delivered is reported to
// the peer as an error instead of looking like a clean end of stream.
func (c *StreamConn) Reset() error {
	c.Stream.CancelWrite(quic.StreamErrorCode(CodeCanceled))
	c.Stream.CancelRead(quic.StreamErrorCode(CodeCanceled))
	return nil
}

var _ net.Conn = (*StreamConn)(nil)
