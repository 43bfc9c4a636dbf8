package quictun

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-yamux/v5"
	"github.com/quic-go/quic-go"
)

// The TCP transport: TLS 1.3 over TCP, with the same certificates and ALPN
// as QUIC, and yamux (libp2p's maintained fork of hashicorp/yamux) as the
// stream multiplexer on it. The fork is chosen for what maps onto QUIC:
// stream resets and connection closes carry a 32-bit error code
// (ResetWithError, CloseWithError), and CloseWrite is a FIN.
//
// What QUIC has and this lacks: unidirectional streams (the request log is
// off over TCP), a reason text with a connection close (the code arrives;
// the text is replaced by the code's name), STOP_SENDING alone (CancelRead
// after the FIN was sent resets the stream with its code, which the peer
// sees on writing; before it, reading just stops locally), and dial-back:
// a TCP client's sessions ride its own connection (the relay).

// muxConfig is the yamux configuration of both sides; maxStreams bounds the
// streams the peer may have open at once.
func muxConfig(maxStreams int64, keepAlive time.Duration) *yamux.Config {
	mc := yamux.DefaultConfig()
	mc.LogOutput = io.Discard
	mc.MaxIncomingStreams = uint32(min(max(maxStreams, 1), 1<<20))
	mc.AcceptBacklog = 256
	mc.EnableKeepAlive = keepAlive > 0
	if keepAlive > 0 {
		mc.KeepAliveInterval = keepAlive
	}
	mc.MaxStreamWindowSize = 16 << 20
	return mc
}

// countingConn counts the reads that brought bytes: Conn.Received.
type countingConn struct {
	net.Conn
	reads atomic.Uint64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.reads.Add(1)
	}
	return n, err
}

// muxConn is a yamux session over TLS over TCP as a Conn.
type muxConn struct {
	sess    *yamux.Session
	raw     *countingConn
	state   tls.ConnectionState
	ctx     context.Context
	cancel  context.CancelCauseFunc
	accepts chan *yamux.Stream
	wg      sync.WaitGroup
}

// newMuxConn starts yamux on tc, a TLS connection whose handshake is done
// and whose underlying connection is raw. ctx may carry values (a
// handshake slot); its end does not close the connection.
func newMuxConn(ctx context.Context, tc *tls.Conn, raw *countingConn, server bool, mc *yamux.Config) (*muxConn, error) {
	var (
		sess *yamux.Session
		err  error
	)
	bc := newBatchConn(tc)
	if server {
		sess, err = yamux.Server(bc, mc, nil)
	} else {
		sess, err = yamux.Client(bc, mc, nil)
	}
	if err != nil {
		bc.Close()
		return nil, fmt.Errorf("start multiplexer: %w", err)
	}
	c := &muxConn{sess: sess, raw: raw, state: tc.ConnectionState(), accepts: make(chan *yamux.Stream)}
	c.ctx, c.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	c.wg.Go(c.acceptLoop)
	return c, nil
}

// acceptLoop hands the streams the peer opens to AcceptStream, and ends
// the connection's context with why it closed.
func (c *muxConn) acceptLoop() {
	for {
		s, err := c.sess.AcceptStream()
		if err != nil {
			c.sess.Close()
			c.cancel(muxError(err))
			return
		}
		select {
		case c.accepts <- s:
		case <-c.sess.CloseChan():
			s.Reset()
		}
	}
}

func (c *muxConn) OpenStreamSync(ctx context.Context) (Stream, error) {
	s, err := c.sess.OpenStream(ctx)
	if err != nil {
		return nil, c.connErr(err)
	}
	return &muxStream{s: s}, nil
}

func (c *muxConn) AcceptStream(ctx context.Context) (Stream, error) {
	select {
	case s := <-c.accepts:
		return &muxStream{s: s}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.ctx.Done():
		return nil, context.Cause(c.ctx)
	}
}

// errNoUniStreams is OpenUniStream over TCP.
var errNoUniStreams = errors.New("no unidirectional streams over the TCP transport")

func (c *muxConn) OpenUniStream() (SendStream, error) { return nil, errNoUniStreams }

func (c *muxConn) AcceptUniStream(ctx context.Context) (ReceiveStream, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.ctx.Done():
		return nil, context.Cause(c.ctx)
	}
}

// CloseWithError closes the connection; the peer learns code (not msg).
func (c *muxConn) CloseWithError(code quic.ApplicationErrorCode, msg string) error {
	c.cancel(&quic.ApplicationError{ErrorCode: code, ErrorMessage: msg})
	if code == 0 {
		c.sess.Close()
	} else {
		c.sess.CloseWithError(uint32(code))
	}
	c.wg.Wait()
	return nil
}

func (c *muxConn) connErr(err error) error {
	if c.ctx.Err() != nil {
		return context.Cause(c.ctx)
	}
	return muxError(err)
}

func (c *muxConn) Context() context.Context { return c.ctx }
func (c *muxConn) LocalAddr() net.Addr      { return c.raw.LocalAddr() }
func (c *muxConn) RemoteAddr() net.Addr     { return c.raw.RemoteAddr() }
func (c *muxConn) TLS() tls.ConnectionState { return c.state }
func (c *muxConn) RTT() time.Duration       { return c.sess.RTT() }
func (c *muxConn) Received() uint64         { return c.raw.reads.Load() }
func (c *muxConn) Transport() string        { return TransportTCP }
func (c *muxConn) String() string           { return "tcp " + c.RemoteAddr().String() }

// muxError turns yamux's errors into quic-go's, which the session layer
// checks: a reset with a code into *quic.StreamError, a close with a code
// into *quic.ApplicationError, a deadline into os.ErrDeadlineExceeded.
func muxError(err error) error {
	var se *yamux.StreamError
	var ge *yamux.GoAwayError
	var ne net.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return &quic.StreamError{ErrorCode: quic.StreamErrorCode(se.ErrorCode), Remote: se.Remote}
	case errors.As(err, &ge):
		return &quic.ApplicationError{ErrorCode: quic.ApplicationErrorCode(ge.ErrorCode), Remote: ge.Remote,
			ErrorMessage: ErrorCode(ge.ErrorCode).String()}
	case errors.Is(err, io.EOF):
		return err
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: %w", os.ErrDeadlineExceeded, err)
	}
	return err
}

// muxStream is a yamux stream as a Stream.
type muxStream struct {
	s           *yamux.Stream
	peekBuf     *[]byte // from peekPool while it holds bytes not yet Read
	peeked      []byte  // in peekBuf: read by Peek, not yet by Read
	writeClosed atomic.Bool
	writeErr    atomic.Pointer[errBox] // why writing failed first, for Write(nil)
}

// peekPool holds Peek's buffers. Peek reads what has arrived, up to a
// buffer, rather than only len(b), so a relay that peeks one byte then
// reads gets a whole burst.
var peekPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

func (s *muxStream) Read(b []byte) (int, error) {
	if len(s.peeked) > 0 {
		n := copy(b, s.peeked)
		s.peeked = s.peeked[n:]
		if len(s.peeked) == 0 {
			peekPool.Put(s.peekBuf)
			s.peekBuf, s.peeked = nil, nil
		}
		return n, nil
	}
	n, err := s.s.Read(b)
	return n, muxError(err)
}

func (s *muxStream) Peek(b []byte) (int, error) {
	for len(s.peeked) < len(b) {
		if s.peekBuf == nil {
			s.peekBuf = peekPool.Get().(*[]byte)
			s.peeked = (*s.peekBuf)[:0]
		}
		buf := *s.peekBuf
		if len(b) > len(buf) {
			return 0, fmt.Errorf("peek %d bytes: more than %d", len(b), len(buf))
		}
		// Move what is left to the front, then fill behind it.
		start := copy(buf, s.peeked)
		n, err := s.s.Read(buf[start:])
		s.peeked = buf[:start+n]
		if err != nil {
			return copy(b, s.peeked), muxError(err)
		}
	}
	return copy(b, s.peeked), nil
}

// Write writes b. Write(nil) reports why the writing direction ended, if
// it did (StreamConn.CloseWrite asks, as of a QUIC stream).
func (s *muxStream) Write(b []byte) (int, error) {
	if len(b) == 0 {
		if e := s.writeErr.Load(); e != nil {
			return 0, e.err
		}
		return 0, nil
	}
	n, err := s.s.Write(b)
	if errors.Is(err, yamux.ErrStreamClosed) {
		return n, fmt.Errorf("write on closed stream: %w", net.ErrClosed)
	}
	err = muxError(err)
	if err != nil {
		s.writeErr.CompareAndSwap(nil, &errBox{err})
	}
	return n, err
}

// errBox holds an error in an atomic.Pointer.
type errBox struct{ err error }

// Close sends a FIN: the writing direction only, as QUIC's.
func (s *muxStream) Close() error {
	s.writeClosed.Store(true)
	err := muxError(s.s.CloseWrite())
	if err != nil {
		s.writeErr.CompareAndSwap(nil, &errBox{err})
	}
	return err
}

// CancelWrite resets the stream with code, both directions.
func (s *muxStream) CancelWrite(code quic.StreamErrorCode) {
	s.writeClosed.Store(true)
	s.s.ResetWithError(uint32(code))
}

// CancelRead stops reading. Once the FIN is sent it resets the stream with
// code, so a peer still writing learns it (QUIC's STOP_SENDING); before,
// reading stops here only, and the writing direction stays open.
func (s *muxStream) CancelRead(code quic.StreamErrorCode) {
	if s.writeClosed.Load() {
		s.s.ResetWithError(uint32(code))
		return
	}
	s.s.CloseRead()
}

func (s *muxStream) SetDeadline(t time.Time) error      { return s.s.SetDeadline(t) }
func (s *muxStream) SetReadDeadline(t time.Time) error  { return s.s.SetReadDeadline(t) }
func (s *muxStream) SetWriteDeadline(t time.Time) error { return s.s.SetWriteDeadline(t) }

// setTransport records the transport of a new control connection, and
// logs why once when auto chose TCP (why set).
func (c *Client) setTransport(name, why string, ep endpoint) {
	c.mu.Lock()
	changed := c.transport != name || c.transportWhy != why
	c.transport, c.transportWhy = name, why
	c.mu.Unlock()
	if changed && why != "" {
		c.log.Warn("QUIC to coordinator failed: using the TCP transport", "coordinator", ep.quic,
			"coordinator_tcp", ep.tcp, "reason", why)
	}
}

// quicFailure says in a few words why QUIC did not connect within wait.
func quicFailure(err error, wait time.Duration) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no QUIC handshake within %s (UDP blocked?)", wait)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("no QUIC handshake within %s (UDP blocked?)", wait)
	}
	return "UDP error: " + err.Error()
}

// dialTCP makes the control connection over the TCP transport: TCP (or
// cfg.DialTCP), TLS 1.3 with the same verification and client certificate
// as QUIC, then yamux.
func (c *Client) dialTCP(ctx context.Context, ep endpoint) (Conn, error) {
	addr := ep.tcp
	dial := c.cfg.DialTCP
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	nc, err := dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("connect to coordinator over TCP %s: %w", addr, err)
	}
	raw := &countingConn{Conn: nc}
	tc := tls.Client(raw, c.coordinatorTLS(ep))
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			return nil, fmt.Errorf("connect to coordinator over TCP %s: %w: its certificate is not trusted for %q: %w",
				addr, ErrUntrustedCoordinator, ep.serverName, err)
		}
		return nil, fmt.Errorf("connect to coordinator over TCP %s: TLS: %w", addr, err)
	}
	keepAlive := c.cfg.KeepAlive
	if ep.several {
		keepAlive = min(keepAlive, failoverIdle/2) // see failover.go
	}
	mc, err := newMuxConn(context.Background(), tc, raw, false, muxConfig(c.cfg.MaxStreams, keepAlive))
	if err != nil {
		return nil, err
	}
	return mc, nil
}

// ServeTCP serves clients on the TCP transport, on ln, until ctx ends. It
// shares Serve's limits: unauthenticated connections count against
// HandshakeLimits (beyond them a connection is closed at once), and the
// TLS handshake and the Hello must both come within HelloTimeout. Dial-back
// workers use QUIC only.
func (s *Server) ServeTCP(ctx context.Context, ln net.Listener) error {
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: append([]string{ALPNControl}, s.cfg.ExtraALPN...),
	}
	s.setCertificate(tlsConf)
	if s.cfg.ClientCAs != nil {
		tlsConf.ClientAuth, tlsConf.ClientCAs = tls.VerifyClientCertIfGiven, s.cfg.ClientCAs
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	s.mu.Lock()
	if s.tcpLns == nil {
		s.tcpLns = make(map[net.Listener]struct{})
	}
	s.tcpLns[ln] = struct{}{}
	if s.sessions.isStopped() {
		ln.Close()
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.tcpLns, ln)
		s.mu.Unlock()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if s.sessions.isStopped() {
				<-ctx.Done() // the clients connected still have sessions to finish
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept tcp: %w", err)
		}
		slot, err := s.guard.admit(sourceOf(nc.RemoteAddr()))
		if err != nil {
			nc.Close()
			continue
		}
		wg.Go(func() {
			defer slot.release()
			conn, err := s.handshakeTCP(ctx, nc, tlsConf, slot)
			if err != nil {
				s.log.Debug("tcp client handshake failed", "client_addr", nc.RemoteAddr(), "err", err)
				return
			}
			s.serveClient(ctx, conn)
			conn.CloseWithError(quic.ApplicationErrorCode(CodeOK), "")
		})
	}
}

// handshakeTCP does the TLS handshake of a new TCP client within
// HelloTimeout, and starts yamux on it.
func (s *Server) handshakeTCP(ctx context.Context, nc net.Conn, tlsConf *tls.Config, slot *handshakeSlot) (Conn, error) {
	raw := &countingConn{Conn: nc}
	tc := tls.Server(raw, tlsConf)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HelloTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		nc.Close()
		return nil, err
	}
	if tc.ConnectionState().NegotiatedProtocol != ALPNControl {
		nc.Close()
		return nil, fmt.Errorf("%w: ALPN %q", ErrProtocol, tc.ConnectionState().NegotiatedProtocol)
	}
	return newMuxConn(context.WithValue(ctx, handshakeSlotKey{}, slot), tc, raw, true, muxConfig(s.cfg.MaxStreams, serverKeepAlive))
}

// errTCPNoDialBack is why a TCP client's sessions are relayed: coordinator
// cannot dial back through its NAT.
var errTCPNoDialBack = errors.New("client on the TCP transport: no dial-back")

// quicProbeMax bounds the wait between two tries of QUIC while auto is
// connected over TCP.
const quicProbeMax = 5 * time.Minute

// probeQUIC tries QUIC now and then (QUICProbe, doubling up to
// quicProbeMax) while the control connection is on TCP, and sends the
// first QUIC connection coordinator welcomes on back, unless ctx ends.
func (c *Client) probeQUIC(ctx context.Context, back chan<- *welcomedConn) {
	wait := c.cfg.QUICProbe
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wait = min(wait*2, quicProbeMax)
		t.Reset(wait)
		next, err := c.tryQUIC(ctx)
		if err != nil {
			c.log.Debug("QUIC to coordinator still fails", "err", err, "next_try_in", wait)
			continue
		}
		select {
		case back <- next:
			return
		case <-ctx.Done():
			next.conn.CloseWithError(quic.ApplicationErrorCode(CodeShutdown), "localproxy shutting down")
			return
		}
	}
}

// tryQUIC makes a QUIC control connection to the coordinator the TCP one
// goes to, within QUICFallback, and says Hello on it.
func (c *Client) tryQUIC(ctx context.Context) (*welcomedConn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	ep := c.currentNode()
	qctx, qcancel := context.WithTimeout(ctx, c.cfg.QUICFallback)
	conn, err := c.dialQUIC(qctx, ep)
	qcancel()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	hello := &Hello{Version: ProtocolVersion, Token: c.cfg.Token, PublicAddr: c.publicAddr, CertSHA256: c.certHash, ClientName: c.cfg.Name}
	c.mu.Unlock()
	ctrl, w, err := greet(ctx, conn, hello)
	if err != nil {
		return nil, err
	}
	return &welcomedConn{conn: conn, ctrl: ctrl, welcome: w, node: ep}, nil
}

// retireCheck is how often a retired TCP connection is checked for
// sessions left.
const retireCheck = 250 * time.Millisecond

// retire closes conn, a TCP control connection left for QUIC, once no
// session is left on it (only its control stream), or ctx ends.
func (c *Client) retire(ctx context.Context, conn Conn) {
	defer conn.CloseWithError(quic.ApplicationErrorCode(CodeOK), "moved to QUIC")
	mc, ok := conn.(*muxConn)
	if !ok {
		return
	}
	t := time.NewTicker(retireCheck)
	defer t.Stop()
	for mc.sess.NumStreams() > 1 {
		select {
		case <-ctx.Done():
			return
		case <-conn.Context().Done():
			return
		case <-t.C:
		}
	}
}

// serverKeepAlive is how often coordinator pings a TCP client: one that
// does not answer within yamux's write timeout (10 s) is gone, about as
// soon as QUIC's idle timeout would tell.
const serverKeepAlive = 15 * time.Second
