package quictun

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// sessionHeaderTimeout bounds how long a dial-back stream may take to send
// its session header.
const sessionHeaderTimeout = 5 * time.Second

// Dial opens a session to target ("host:port") through coordinator: it
// registers a fresh session id, sends Open on the control connection and
// returns the dial-back stream coordinator opens for it. Errors:
// ErrCoordinatorUnavailable, a *SessionError from coordinator (for example
// CodeTargetUnreachable), ErrDialBackTimeout, or ctx's cause.
func (c *Client) Dial(ctx context.Context, target string) (*StreamConn, error) {
	type result struct {
		sc  *StreamConn
		err error
	}
	// The caller's goroutine usually lives on as the session's relay: keep
	// its stack small (see onFreshStack).
	r := onFreshStack(func() result {
		sc, err := c.dialSession(ctx, target)
		return result{sc, err}
	})
	return r.sc, r.err
}

// dialSession is Dial, on the caller's goroutine.
func (c *Client) dialSession(ctx context.Context, target string) (*StreamConn, error) {
	conn, err := c.controlConn(ctx)
	if err != nil {
		return nil, err
	}
	dial := c.dial
	if c.cfg.FastOpen {
		dial = c.dialFast
	}
	sc, err := dial(ctx, conn, target)
	if err != nil && errors.Is(err, ErrCoordinatorUnavailable) && !errors.Is(err, errCoordinatorSilent) &&
		ctx.Err() == nil && connEnded(conn, err) {
		// The control connection died under us (coordinator restarted):
		// try once more on the next one.
		if conn, err = c.controlConn(ctx); err != nil {
			return nil, err
		}
		sc, err = dial(ctx, conn, target)
	}
	return sc, err
}

// connEnded reports whether conn has ended. A stream can report the
// connection's closing error (coordinator restarting) a moment before
// quic-go marks the connection done: then it waits for that mark.
func connEnded(conn Conn, err error) bool {
	if conn.Context().Err() != nil {
		return true
	}
	var (
		ae *quic.ApplicationError
		te *quic.TransportError
		ie *quic.IdleTimeoutError
		re *quic.StatelessResetError
	)
	if !errors.As(err, &ae) && !errors.As(err, &te) && !errors.As(err, &ie) && !errors.As(err, &re) {
		return false
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-conn.Context().Done():
		return true
	case <-t.C:
		return false
	}
}

// dialFast sends a FastOpen on a new stream of conn and returns the stream
// at once; coordinator's answer is read by its first Read or Peek (see
// StreamConn.awaitAnswer), under the same time limits as dial's.
func (c *Client) dialFast(ctx context.Context, conn Conn, target string) (*StreamConn, error) {
	start := time.Now()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: open stream: %w", ErrCoordinatorUnavailable, err)
	}
	id := NewSessionID()
	if err := WriteFrame(str, &Open{Session: id, Target: target, Fast: true}); err != nil {
		str.CancelRead(quic.StreamErrorCode(CodeCanceled))
		str.CancelWrite(quic.StreamErrorCode(CodeCanceled))
		return nil, c.openError(ctx, target, err)
	}

	// The limits dial enforces with deadlines, enforced here by resetting
	// the stream: the reader waiting for the answer then gets an error.
	var silent, late atomic.Bool
	abort := func(flag *atomic.Bool) {
		flag.Store(true)
		str.CancelRead(quic.StreamErrorCode(CodeTimeout))
		str.CancelWrite(quic.StreamErrorCode(CodeTimeout))
	}
	received := conn.Received()
	watchdog := time.AfterFunc(c.cfg.SilenceTimeout, func() {
		if conn.Received() == received {
			if c.newlySilent(conn) {
				c.log.Warn("coordinator stopped answering: sessions are refused until it answers again or the connection times out",
					"coordinator", conn.RemoteAddr(), "silent_for", c.cfg.SilenceTimeout)
			}
			abort(&silent)
		}
	})
	deadline := time.AfterFunc(c.cfg.OpenTimeout, func() { abort(&late) })

	sc := newStreamConn(str, conn, id)
	sc.transport = "fast-open"
	if conn.Transport() == TransportTCP {
		sc.transport = "tcp fast-open"
	}
	sc.stopAnswer = func() {
		watchdog.Stop()
		deadline.Stop()
	}
	sc.awaitAnswer = func() error {
		msg, err := ReadFrame(str)
		sc.stopAnswer()
		switch {
		case err == nil:
		case silent.Load():
			return fmt.Errorf("%w: no packet from it in %s (is coordinator running, and is the network to it up?)",
				errCoordinatorSilent, c.cfg.SilenceTimeout)
		case late.Load():
			return &SessionError{Target: target, Code: CodeTimeout, Reason: "coordinator did not answer in time"}
		case isRemoteCode(err, CodeProtocol):
			return &SessionError{Target: target, Code: CodeProtocol,
				Reason: "coordinator refused the fast open (is it older than localproxy? update it, or turn fast open off)"}
		default:
			return c.openError(context.Background(), target, err)
		}
		res, ok := msg.(*OpenResult)
		switch {
		case !ok:
			err = fmt.Errorf("%w: expected open result, got %T", ErrProtocol, msg)
		case res.Code != CodeOK:
			err = &SessionError{Target: target, Code: res.Code, Reason: res.Reason}
		default:
			c.stats.sessions.Add(1)
			c.stats.fastOpenSessions.Add(1)
			c.stats.setupLatency.Observe(time.Since(start))
			return nil
		}
		str.CancelRead(quic.StreamErrorCode(CodeCanceled))
		str.CancelWrite(quic.StreamErrorCode(CodeCanceled))
		return err
	}
	return sc, nil
}

// isRemoteCode reports whether err is the peer resetting a stream with code.
func isRemoteCode(err error, code ErrorCode) bool {
	var se *quic.StreamError
	return errors.As(err, &se) && se.Remote && ErrorCode(se.ErrorCode) == code
}

// errCoordinatorSilent is why Dial gave up on a coordinator that sent
// nothing for SilenceTimeout.
var errCoordinatorSilent = fmt.Errorf("%w: coordinator stopped answering", ErrCoordinatorUnavailable)

// dial runs one Open exchange on conn.
func (c *Client) dial(ctx context.Context, conn Conn, target string) (_ *StreamConn, err error) {
	start := time.Now()
	id := NewSessionID()
	ch, err := c.table.add(id)
	if err != nil {
		c.stats.limits.hit(c.log, LimitPendingSessions, "session refused: too many sessions waiting for their dial-back",
			"target", target, "max_pending_sessions", c.cfg.MaxPendingSessions)
		return nil, fmt.Errorf("open session to %s: %w (%d, max-pending-sessions)", target, err, c.cfg.MaxPendingSessions)
	}
	defer func() {
		// Still registered means we gave up: refuse a late stream.
		if d, ok := c.table.remove(id); ok {
			d.refuse(CodeCanceled)
		}
	}()

	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: open stream: %w", ErrCoordinatorUnavailable, err)
	}
	// On success the open stream ends with a FIN each way (dial-back) or
	// becomes the session (relay); on every other way out both directions
	// are reset.
	succeeded, relayed := false, false
	defer func() {
		if !succeeded && !relayed {
			str.CancelRead(quic.StreamErrorCode(CodeCanceled))
			str.CancelWrite(quic.StreamErrorCode(CodeCanceled))
		}
	}()
	stop := context.AfterFunc(ctx, func() { str.CancelWrite(quic.StreamErrorCode(CodeCanceled)) })
	defer stop()

	// Watch for a coordinator gone silent (see SilenceTimeout): any packet
	// from it, an acknowledgement of the Open at least, proves it alive.
	// The session is given up; the connection is left to the QUIC idle
	// timeout, so that a path that comes back keeps its sessions.
	received := conn.Received()
	var silent atomic.Bool
	watchdog := time.AfterFunc(c.cfg.SilenceTimeout, func() {
		if conn.Received() == received {
			silent.Store(true)
			if c.newlySilent(conn) { // once per connection
				c.log.Warn("coordinator stopped answering: sessions are refused until it answers again or the connection times out",
					"coordinator", conn.RemoteAddr(), "silent_for", c.cfg.SilenceTimeout)
			}
			str.CancelRead(quic.StreamErrorCode(CodeTimeout))
			str.CancelWrite(quic.StreamErrorCode(CodeTimeout))
		}
	})
	defer watchdog.Stop()
	defer func() {
		if silent.Load() && err != nil {
			err = fmt.Errorf("%w: no packet from it in %s (is coordinator running, and is the network to it up?)",
				errCoordinatorSilent, c.cfg.SilenceTimeout)
		}
	}()

	if err := WriteFrame(str, &Open{Session: id, Target: target}); err != nil {
		return nil, c.openError(ctx, target, err)
	}
	str.SetReadDeadline(time.Now().Add(c.cfg.OpenTimeout))
	msg, err := ReadFrame(str)
	if err != nil {
		return nil, c.openError(ctx, target, err)
	}
	res, ok := msg.(*OpenResult)
	if !ok {
		return nil, fmt.Errorf("%w: expected open result, got %T", ErrProtocol, msg)
	}
	if res.Code != CodeOK {
		return nil, &SessionError{Target: target, Code: res.Code, Reason: res.Reason}
	}
	if res.PunchTo.IsValid() {
		// The dial-back will come from elsewhere: open our NAT towards it
		// first, then say so.
		stop := c.punch(id, res.PunchTo)
		defer stop()
		if _, err := str.Write([]byte{punchedMarker}); err != nil {
			return nil, c.openError(ctx, target, err)
		}
	}

	// coordinator reached the target and is dialing back. It ends the open
	// stream with FIN once the dial-back stream is acknowledged, writes
	// relayMarker when it relays the session on this stream instead, or
	// resets it when it can do neither. The reader below outlives a
	// successful dial to take that FIN, so that the stream ends cleanly
	// (no STOP_SENDING, no RESET_STREAM: fewer packets per session).
	str.SetReadDeadline(time.Time{})
	failed := make(chan error, 1)
	relay := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer func() {
		if !succeeded {
			if !relayed {
				str.CancelRead(quic.StreamErrorCode(CodeCanceled)) // ends the reader below
			}
			wg.Wait()
		}
	}()
	// The session takes whichever comes first, the dial-back stream or the
	// relay marker (coordinator gave the dial-back up just as it arrived);
	// the other is turned away.
	const (
		pathUndecided = iota
		pathDialBack
		pathRelay
	)
	var path atomic.Int32
	wg.Go(func() {
		var b [1]byte
		n, err := str.Read(b[:])
		switch {
		case n == 1 && b[0] == relayMarker && path.CompareAndSwap(pathUndecided, pathRelay):
			relay <- struct{}{}
			return
		case n == 1:
			failed <- fmt.Errorf("%w: unexpected byte 0x%02x after open result", ErrProtocol, b[0])
		case err != nil:
			var se *quic.StreamError
			if errors.As(err, &se) && se.Remote {
				failed <- &SessionError{Target: target, Code: ErrorCode(se.ErrorCode), Reason: "coordinator could not dial back"}
			}
		}
		if n == 1 || err != nil && !errors.Is(err, io.EOF) {
			str.CancelRead(quic.StreamErrorCode(CodeCanceled)) // not the clean end: given up on
		}
	})
	takeRelay := func() (*StreamConn, error) {
		relayed = true
		c.stats.sessions.Add(1)
		c.stats.setupLatency.Observe(time.Since(start))
		c.stats.relaySessions.Add(1)
		sc := newStreamConn(str, conn, id)
		sc.transport = "relay"
		if conn.Transport() == TransportTCP {
			sc.transport = TransportTCP // no dial-back over TCP: every session rides the connection
		}
		return sc, nil
	}
	timer := time.NewTimer(c.cfg.DialBackTimeout)
	defer timer.Stop()
	select {
	case d := <-ch:
		if !path.CompareAndSwap(pathUndecided, pathDialBack) {
			d.refuse(CodeCanceled)
			<-relay
			return takeRelay()
		}
		c.stats.sessions.Add(1)
		c.stats.setupLatency.Observe(time.Since(start))
		str.Close()
		str.SetReadDeadline(time.Now().Add(openEndTimeout)) // bounds the reader, which lives on
		succeeded = true
		sc := newStreamConn(d.stream, wrapQUIC(d.conn), id)
		sc.transport = "dial-back"
		return sc, nil
	case <-relay:
		return takeRelay()
	case err := <-failed:
		return nil, err
	case <-timer.C:
		c.stats.dialBackTimeouts.Add(1)
		return nil, fmt.Errorf("session to %s: %w after %s", target, ErrDialBackTimeout, c.cfg.DialBackTimeout)
	case <-conn.Context().Done():
		return nil, fmt.Errorf("%w: connection lost: %w", ErrCoordinatorUnavailable, context.Cause(conn.Context()))
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// openEndTimeout bounds the wait for coordinator's FIN on an open stream
// after a successful dial-back; the stream is reset if it does not come.
const openEndTimeout = 10 * time.Second

// punchRepeats are the delays after the first punch at which it is sent
// again while the dial-back has not arrived, in case a punch is lost.
var punchRepeats = []time.Duration{50 * time.Millisecond, 150 * time.Millisecond, 350 * time.Millisecond, 750 * time.Millisecond}

// punch sends the session's punch packet to addr from our socket now, and
// again after each of punchRepeats until stop is called.
func (c *Client) punch(id SessionID, addr netip.AddrPort) (stop func()) {
	pkt, to := punchPacket(id), net.UDPAddrFromAddrPort(addr)
	send := func() {
		if _, err := c.cfg.Transport.WriteTo(pkt, to); err != nil {
			c.log.Debug("punch not sent", "to", addr, "err", err)
		}
	}
	send()
	c.stats.punches.Add(1)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		start := time.Now()
		for _, at := range punchRepeats {
			select {
			case <-done:
				return
			case <-time.After(time.Until(start.Add(at))):
				send()
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// openError explains why an Open exchange failed.
func (c *Client) openError(ctx context.Context, target string, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote {
		return &SessionError{Target: target, Code: ErrorCode(se.ErrorCode)}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return &SessionError{Target: target, Code: CodeTimeout, Reason: "coordinator did not answer in time"}
	}
	return fmt.Errorf("%w: open session to %s: %w", ErrCoordinatorUnavailable, target, err)
}

// dialBackTLS is the TLS configuration of the tunnel creation service: our
// ephemeral certificate, and only coordinator's pinned certificate as
// client.
func (c *Client) dialBackTLS() *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{c.cert},
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: verifyPinnedLeaf(c.pinnedCoordinator),
		NextProtos:            []string{ALPNDialBack},
	}
}

func (c *Client) pinnedCoordinator() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.coordLeaf
}

// tunnelRelisten is how long the tunnel creation service waits before
// listening again after its listener stopped, unless EnsureTunnelService
// asks sooner.
const tunnelRelisten = time.Second

// serveTunnel serves the tunnel creation service on ln until ctx ends.
// Should the listener stop while ctx lives, it listens again on the same
// transport (EnsureTunnelService asks at once; otherwise every
// tunnelRelisten); dial-back connections already accepted live on.
func (c *Client) serveTunnel(ctx context.Context, ln *quic.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c.acceptDialBacks(ctx, ln, &wg)
		ln.Close()
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		c.tunnelLn, c.tunnelUp = nil, make(chan struct{})
		c.mu.Unlock()
		c.log.Warn("tunnel creation service stopped; listening again")
		for ln = nil; ln == nil; {
			t := time.NewTimer(tunnelRelisten)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-c.tunnelKick:
			case <-t.C:
			}
			t.Stop()
			l, err := c.cfg.Transport.Listen(c.dialBackTLS(), c.quicConfig())
			c.mu.Lock()
			if c.tunnelListenErr = err; err == nil {
				ln, c.tunnelLn = l, l
				close(c.tunnelUp)
				c.tunnelUp = nil
			}
			c.mu.Unlock()
			if err != nil {
				c.log.Warn("tunnel creation service cannot listen again", "err", err)
			}
		}
		c.log.Info("tunnel creation service serving again")
	}
}

// EnsureTunnelService makes sure the tunnel creation service is serving:
// if its listener stopped, it has it listen again at once and waits for
// that until ctx ends. restarted says it had to.
func (c *Client) EnsureTunnelService(ctx context.Context) (restarted bool, err error) {
	c.mu.Lock()
	up := c.tunnelUp
	c.mu.Unlock()
	if up == nil {
		return false, nil
	}
	select {
	case c.tunnelKick <- struct{}{}:
	default:
	}
	select {
	case <-up:
		return true, nil
	case <-ctx.Done():
		c.mu.Lock()
		err := c.tunnelListenErr
		c.mu.Unlock()
		if err == nil {
			err = context.Cause(ctx)
		}
		return false, fmt.Errorf("tunnel creation service not serving: %w", err)
	}
}

// acceptDialBacks accepts dial-back connections on ln until it or ctx
// ends, serving each in wg.
func (c *Client) acceptDialBacks(ctx context.Context, ln *quic.Listener, wg *sync.WaitGroup) {
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		authenticated(wrapQUIC(conn)) // its TLS handshake checked coordinator's pinned certificate
		c.log.Debug("dial-back connection accepted", "peer", conn.RemoteAddr())
		wg.Go(func() {
			c.serveDialBack(ctx, conn)
		})
	}
}

// serveDialBack routes every stream of one dial-back connection to its
// session until the connection or ctx ends.
func (c *Client) serveDialBack(ctx context.Context, conn *quic.Conn) {
	c.mu.Lock()
	c.dialBacks[conn] = time.Now()
	c.mu.Unlock()
	select {
	case c.dialBackAccepted <- struct{}{}:
	default:
	}
	defer func() {
		c.mu.Lock()
		delete(c.dialBacks, conn)
		c.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, func() {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeShutdown), "localproxy shutting down")
	})
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		s, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		wg.Go(func() { c.route(dialBack{stream: s, conn: conn}) })
	}
}

// route reads a dial-back stream's session header and hands the stream to
// the session waiting for it.
func (c *Client) route(d dialBack) {
	d.stream.SetReadDeadline(time.Now().Add(sessionHeaderTimeout))
	id, err := ReadSessionHeader(d.stream)
	d.stream.SetReadDeadline(time.Time{})
	if err != nil {
		c.stats.badStreams.Add(1)
		c.log.Warn("dial-back stream refused: bad session header", "peer", d.conn.RemoteAddr(), "err", err)
		d.refuse(CodeProtocol)
		return
	}
	c.mu.Lock()
	drop := c.dropDialBackStreams
	c.mu.Unlock()
	if drop {
		return // as if the connection had died: no ack, no answer
	}
	// The ack goes first, before the session owns the stream.
	if _, err := d.stream.Write([]byte{dialBackAck}); err != nil {
		d.refuse(CodeCanceled)
		return
	}
	if !c.table.deliver(id, d) {
		c.stats.unknownSessions.Add(1)
		c.log.Warn("dial-back stream refused: unknown or expired session", "session", id, "peer", d.conn.RemoteAddr())
		d.refuse(CodeSessionUnknown)
	}
}
