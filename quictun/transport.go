package quictun

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// Conn is a control connection between localproxy and coordinator, over
// either transport: QUIC (quicConn) or TLS over TCP with a yamux
// multiplexer (muxConn, tcp.go). The session layer (Hello, Open, the relay,
// exposed services) is written once against it.
//
// Codes and errors keep quic-go's types on both transports: a stream reset
// with a code surfaces as *quic.StreamError, a connection closed with a
// code as *quic.ApplicationError, so the session layer checks them in one
// way.
type Conn interface {
	OpenStreamSync(ctx context.Context) (Stream, error)
	AcceptStream(ctx context.Context) (Stream, error)
	// OpenUniStream and AcceptUniStream carry the request log; over TCP
	// there are none (OpenUniStream fails, AcceptUniStream waits for the
	// end), so the request log stays off.
	OpenUniStream() (SendStream, error)
	AcceptUniStream(ctx context.Context) (ReceiveStream, error)
	CloseWithError(code quic.ApplicationErrorCode, msg string) error
	// Context ends with the connection, its cause the closing error.
	Context() context.Context
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
	// TLS is the handshake's outcome (peer certificates, ALPN).
	TLS() tls.ConnectionState
	// RTT is the smoothed round-trip time, zero while unknown.
	RTT() time.Duration
	// Received counts what arrived from the peer (packets over QUIC,
	// reads from the socket over TCP): a liveness signal.
	Received() uint64
	// Transport names the transport: "quic" or "tcp".
	Transport() string
}

// Stream is one bidirectional stream. Close ends the writing direction
// only (a FIN); CancelWrite and CancelRead abort with a code.
type Stream interface {
	Read(b []byte) (int, error)
	Write(b []byte) (int, error)
	Close() error
	CancelRead(code quic.StreamErrorCode)
	CancelWrite(code quic.StreamErrorCode)
	SetDeadline(t time.Time) error
	SetReadDeadline(t time.Time) error
	SetWriteDeadline(t time.Time) error
	// Peek fills b without consuming, blocking until len(b) bytes are
	// there or the stream ends (then io.EOF with what there was).
	Peek(b []byte) (int, error)
}

// SendStream is the sending half of a unidirectional stream.
type SendStream interface {
	Write(b []byte) (int, error)
	SetWriteDeadline(t time.Time) error
	CancelWrite(code quic.StreamErrorCode)
}

// ReceiveStream is the receiving half of a unidirectional stream.
type ReceiveStream interface {
	Read(b []byte) (int, error)
	CancelRead(code quic.StreamErrorCode)
}

// Transport names.
const (
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
	TransportAuto = "auto"
)

// quicConn is a QUIC connection as a Conn.
type quicConn struct{ *quic.Conn }

func wrapQUIC(c *quic.Conn) Conn { return quicConn{c} }

// quicOf returns the QUIC connection under c, nil over TCP.
func quicOf(c Conn) *quic.Conn {
	if q, ok := c.(quicConn); ok {
		return q.Conn
	}
	return nil
}

func (c quicConn) OpenStreamSync(ctx context.Context) (Stream, error) {
	s, err := c.Conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (c quicConn) AcceptStream(ctx context.Context) (Stream, error) {
	s, err := c.Conn.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (c quicConn) OpenUniStream() (SendStream, error) {
	s, err := c.Conn.OpenUniStream()
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (c quicConn) AcceptUniStream(ctx context.Context) (ReceiveStream, error) {
	s, err := c.Conn.AcceptUniStream(ctx)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (c quicConn) TLS() tls.ConnectionState { return c.Conn.ConnectionState().TLS }
func (c quicConn) RTT() time.Duration       { return c.Conn.ConnectionStats().SmoothedRTT }
func (c quicConn) Received() uint64         { return c.Conn.ConnectionStats().PacketsReceived }
func (c quicConn) Sent() uint64             { return c.Conn.ConnectionStats().PacketsSent }
func (c quicConn) Transport() string        { return TransportQUIC }
