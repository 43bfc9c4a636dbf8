package quictun

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Client is the localproxy side of the tunnel: it keeps an authenticated
// control connection to coordinator, asks it to open sessions, and serves
// the tunnel creation service that coordinator dials back to.
type Client struct {
	cfg      ClientConfig
	log      *slog.Logger
	cert     tls.Certificate
	certHash [32]byte
	table    *sessionTable
	kick     chan struct{}   // asks the connect loop to retry now
	guard    *handshakeGuard // dial-back connections not yet authenticated

	mu        sync.Mutex
	conn      Conn     // control connection; nil while down
	control   Stream   // its control stream
	coordLeaf []byte   // coordinator's certificate, pinned for dial-backs
	node      endpoint // the coordinator of conn, or of the last one
	nodeSet   bool     // node was connected to once
	// candidatesSeen is how many candidates the last connect dialed.
	candidatesSeen int
	// avoid is the QUIC address of a coordinator the next connect leaves
	// out when there are others: the one whose connection just ended, or
	// that refused the last Hello.
	avoid      string
	ready      chan struct{}
	lastErr    error
	publicAddr netip.AddrPort
	welcome    Welcome
	// transport and transportWhy: see ClientStats.
	transport, transportWhy string
	// registrations are the outcomes of publishing cfg.Services on the
	// current control connection.
	registrations []Registration
	// dialBacks are the dial-back connections being served, with the
	// time each was accepted.
	dialBacks map[*quic.Conn]time.Time
	// dialBackAccepted is signalled when one is accepted.
	dialBackAccepted chan struct{}
	// tunnelLn is the tunnel creation service's listener, nil when it
	// stopped; tunnelUp is closed when it serves again, and
	// tunnelListenErr says why listening again failed.
	tunnelLn        *quic.Listener
	tunnelUp        chan struct{}
	tunnelListenErr error
	// tunnelKick asks the tunnel creation service to listen again now.
	tunnelKick chan struct{}

	stats clientCounters
	// retiring runs the retire of TCP control connections left for QUIC.
	retiring sync.WaitGroup
	// silentConn is the last control connection found silent (see
	// SilenceTimeout), so that is logged once per connection.
	silentMu   sync.Mutex
	silentConn Conn

	// refuseDialBacks leaves the tunnel creation service off, so dial-back
	// packets vanish as behind a NAT that lets nothing in. Tests only.
	refuseDialBacks bool
	// dropDialBackStreams ignores dial-back streams, as a dial-back
	// connection that died silently would. Tests only.
	dropDialBackStreams bool
}

type clientCounters struct {
	sessions, dialBackTimeouts, unknownSessions, badStreams atomic.Uint64
	connects, relaySessions, punches                        atomic.Uint64
	fastOpenSessions, addrChanges, dialBacksClosed          atomic.Uint64
	failovers                                               atomic.Uint64
	setupLatency                                            Histogram
	limits                                                  limitHits
	reverseActive                                           atomic.Int64
}

// ClientStats is a snapshot of a Client's counters.
type ClientStats struct {
	Connected bool
	// Coordinator is the coordinator of the control connection (the last
	// one while down), "" before the first; Candidates how many were
	// dialed to choose it (see ClientConfig.Coordinators).
	Coordinator string
	Candidates  int
	// Failovers counts control connections made to another coordinator
	// than the one before.
	Failovers uint64
	// Transport is the control connection's transport ("quic", "tcp"),
	// the last one used while down; TransportWhy says why auto chose TCP.
	Transport, TransportWhy string
	PublicAddr              netip.AddrPort
	ObservedAddr            netip.AddrPort // as coordinator saw us
	RTT                     time.Duration  // smoothed round-trip time of the control connection
	Sessions                uint64         // sessions established
	RelaySessions           uint64         // of which relayed over the control connection after a failed dial-back
	FastOpenSessions        uint64         // of which opened with fast open (also over the control connection)
	PendingSessions         int            // waiting for their dial-back now
	DialBackTimeouts        uint64
	UnknownSessions         uint64 // dial-back streams refused: unknown or expired id
	BadStreams              uint64 // dial-back streams refused: malformed header
	Connects                uint64 // control connections established
	Punches                 uint64 // sessions that punched towards a dial-back worker
	// PublicAddrChanges counts changes of the public address after the
	// first one learnt (SetPublicAddr).
	PublicAddrChanges uint64
	// DialBacksClosed counts dial-back connections closed by
	// CloseDialBacks and DialBackProbe.CloseSilent (their NAT mapping was
	// gone).
	DialBacksClosed uint64
	// SetupLatency is the time from a Dial to its session being ready
	// (coordinator reached the target and the dial-back or relay is up).
	SetupLatency HistogramSnapshot
	// LimitHits counts, by limit name (LimitPendingSessions,
	// LimitHandshakes, LimitHandshakesPerSource), the sessions and
	// dial-back connection attempts refused for a limit.
	LimitHits map[string]int64
	// Handshakes counts the dial-back connections not yet authenticated
	// now (see HandshakeLimits); HandshakeRetries the connection attempts
	// asked to answer a Retry first.
	Handshakes       int
	HandshakeRetries int64
	// ReverseSessions counts the reverse sessions (public connections to
	// exposed apps) open now, from their stream's arrival to its end.
	ReverseSessions int64
}

// NewClient validates cfg and prepares a client. Run starts it.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	cert, hash, err := newEphemeralCert()
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg:              cfg,
		log:              cfg.Logger,
		cert:             cert,
		certHash:         hash,
		table:            newSessionTable(cfg.MaxPendingSessions),
		kick:             make(chan struct{}, 1),
		dialBacks:        make(map[*quic.Conn]time.Time),
		dialBackAccepted: make(chan struct{}, 1),
		tunnelKick:       make(chan struct{}, 1),
		ready:            make(chan struct{}),
		publicAddr:       cfg.PublicAddr,
	}
	c.guard = newHandshakeGuard(cfg.Handshakes, cfg.Logger, &c.stats.limits)
	return c, nil
}

// Run serves the tunnel creation service and keeps the control connection
// up, reconnecting with backoff, until ctx ends. It returns ctx's cause, or
// ErrAuthFailed when coordinator refuses the token: retrying cannot help.
func (c *Client) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	if !c.refuseDialBacks {
		c.guard.install(c.cfg.Transport)
		ln, err := c.cfg.Transport.Listen(c.dialBackTLS(), c.quicConfig())
		if err != nil {
			return fmt.Errorf("start tunnel creation service: %w", err)
		}
		c.mu.Lock()
		c.tunnelLn = ln
		c.mu.Unlock()
		wg.Go(func() { c.serveTunnel(ctx, ln) })
	}
	err := c.connectLoop(ctx)
	cancel(err)
	wg.Wait()
	c.retiring.Wait()
	return err
}

// connectLoop keeps one control connection up until ctx ends or the token
// is refused.
func (c *Client) connectLoop(ctx context.Context) error {
	backoff := c.cfg.ReconnectMin
	for {
		up := time.Now()
		err := c.connectAndWait(ctx)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		c.setDown(err)
		if errors.Is(err, ErrAuthFailed) {
			c.log.Error("coordinator refused this client's token; check --token", "coordinator", c.coordinatorName(), "err", err)
			return err
		}
		if time.Since(up) > c.cfg.ReconnectMax {
			backoff = c.cfg.ReconnectMin // it was up for a good while
		}
		wait := backoff/2 + rand.N(backoff/2+1) // jitter in [backoff/2, backoff]
		c.log.Warn("coordinator connection down; retrying", "coordinator", c.coordinatorName(), "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(wait):
		case <-c.kick:
		}
		backoff = min(backoff*2, c.cfg.ReconnectMax)
	}
}

// connectAndWait dials coordinator, says Hello, publishes the connection
// and blocks until it closes.
func (c *Client) connectAndWait(ctx context.Context) error {
	wc, err := c.connect(ctx)
	for err == nil {
		wc, err = c.serve(ctx, wc)
		if wc == nil {
			return err
		}
	}
	return err
}

// welcomedConn is a control connection that coordinator welcomed.
type welcomedConn struct {
	conn    Conn
	ctrl    Stream
	welcome *Welcome
	node    endpoint
}

// serve publishes conn as the control connection and blocks until it
// closes. With auto on TCP it probes QUIC meanwhile; once QUIC works it
// returns that connection, to serve next, and leaves conn to the sessions
// on it, closed when they have ended (retire).
func (c *Client) serve(ctx context.Context, wc *welcomedConn) (*welcomedConn, error) {
	conn, ctrl, w := wc.conn, wc.ctrl, wc.welcome
	c.mu.Lock()
	c.conn, c.control, c.welcome = conn, ctrl, *w
	c.coordLeaf = conn.TLS().PeerCertificates[0].Raw
	prev, moved := c.node, c.nodeSet && c.node.quic != wc.node.quic
	c.node, c.nodeSet = wc.node, true
	c.lastErr = nil
	select {
	case <-c.ready: // already up: a move from TCP to QUIC
	default:
		close(c.ready)
	}
	pub := c.publicAddr
	c.mu.Unlock()
	c.stats.connects.Add(1)
	if moved {
		c.stats.failovers.Add(1)
		c.log.Warn("failed over to another coordinator; exposed services are published there", "coordinator", wc.node, "previous", prev)
	}
	c.log.Info("connected to coordinator", "coordinator", wc.node, "public_addr", pub,
		"observed_addr", w.ObservedAddr, "nat_mapping", NATMapping(pub, w.ObservedAddr),
		"rtt", conn.RTT().Round(time.Microsecond), "transport", conn.Transport())

	// The control stream carries nothing from coordinator yet; reading it
	// notices when coordinator goes away.
	var wg sync.WaitGroup
	retired := false
	defer func() {
		if !retired {
			wg.Wait() // both ways out below close conn, which ends these
		}
	}()
	wg.Go(func() { c.serveReverse(ctx, conn) })
	if c.cfg.RequestLog {
		wg.Go(func() { c.serveRequestLog(ctx, conn) })
	}
	if len(c.cfg.Services) > 0 {
		wg.Go(func() { c.registerServices(ctx, conn) })
	}
	wg.Go(func() { c.watchCoordinator(ctx, conn) })
	wg.Go(func() {
		var b [1]byte
		ctrl.Read(b[:])
		conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), "control stream ended")
	})
	var quicBack chan *welcomedConn
	if conn.Transport() == TransportTCP && c.cfg.Via == TransportAuto {
		quicBack = make(chan *welcomedConn)
		pctx, stopProbe := context.WithCancel(ctx)
		defer stopProbe()
		wg.Go(func() { c.probeQUIC(pctx, quicBack) })
	}
	select {
	case <-ctx.Done():
		conn.CloseWithError(quic.ApplicationErrorCode(CodeShutdown), "localproxy shutting down")
		return nil, context.Cause(ctx)
	case <-conn.Context().Done():
		// The sessions on coordinator's own dial-back connections end
		// with it (see watch.go).
		if n := c.closeDialBacksFrom(addrPort(conn.RemoteAddr()), "control connection to coordinator ended"); n > 0 {
			c.log.Info("closed coordinator's dial-back connections with the control connection", "connections", n)
		}
		c.mu.Lock()
		c.avoid = wc.node.quic
		c.mu.Unlock()
		return nil, authError(context.Cause(conn.Context()))
	case next := <-quicBack:
		c.log.Info("QUIC to coordinator works again: new sessions go over it, those on TCP finish there",
			"coordinator", wc.node)
		c.setTransport(TransportQUIC, "", next.node)
		retired = true
		c.retiring.Go(func() {
			c.retire(ctx, conn)
			wg.Wait()
		})
		return next, nil
	}
}

// connect dials the nearest coordinator (see failover.go) and says Hello.
func (c *Client) connect(ctx context.Context) (*welcomedConn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout)
	defer cancel()
	eps := c.candidates(ctx)
	c.mu.Lock()
	c.candidatesSeen = len(eps)
	if others := slices.DeleteFunc(slices.Clone(eps), func(ep endpoint) bool { return ep.quic == c.avoid }); len(others) > 0 {
		eps = others
	}
	c.avoid = ""
	c.mu.Unlock()
	var (
		won dialResult
		err error
		why string // TCP chosen by auto: why
	)
	switch c.cfg.Via {
	case TransportTCP:
		won, err = raceDial(ctx, eps, c.dialTCP)
	case TransportAuto:
		qctx, qcancel := context.WithTimeout(ctx, c.cfg.QUICFallback)
		won, err = raceDial(qctx, eps, c.dialQUIC)
		qcancel()
		if err != nil && ctx.Err() == nil && !errors.Is(err, ErrUntrustedCoordinator) {
			why = quicFailure(err, c.cfg.QUICFallback)
			if won, err = raceDial(ctx, eps, c.dialTCP); err != nil {
				err = fmt.Errorf("QUIC failed (%s), and TCP: %w", why, err)
			}
		}
	default:
		won, err = raceDial(ctx, eps, c.dialQUIC)
	}
	if err != nil {
		return nil, err
	}
	if len(eps) > 1 {
		c.log.Info("chose the nearest coordinator: the first of the candidates to complete a handshake",
			"coordinator", won.ep, "handshake", won.took.Round(time.Microsecond), "candidates", len(eps))
	}
	c.mu.Lock()
	hello := &Hello{Version: ProtocolVersion, Token: c.cfg.Token, PublicAddr: c.publicAddr, CertSHA256: c.certHash, ClientName: c.cfg.Name}
	c.mu.Unlock()
	ctrl, w, err := greet(ctx, won.conn, hello)
	if err != nil {
		c.mu.Lock()
		c.avoid = won.ep.quic
		c.mu.Unlock()
		return nil, fmt.Errorf("coordinator %s: %w", won.ep, err)
	}
	c.setTransport(won.conn.Transport(), why, won.ep)
	return &welcomedConn{conn: won.conn, ctrl: ctrl, welcome: w, node: won.ep}, nil
}

// coordinatorTLS is the TLS configuration of the control connection to
// ep, on either transport.
func (c *Client) coordinatorTLS(ep endpoint) *tls.Config {
	tlsConf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		RootCAs:            c.cfg.RootCAs,
		ServerName:         ep.serverName,
		InsecureSkipVerify: c.cfg.InsecureSkipVerify,
		NextProtos:         []string{ALPNControl},
	}
	if c.cfg.Certificate != nil {
		tlsConf.Certificates = []tls.Certificate{*c.cfg.Certificate}
	}
	return tlsConf
}

// dialQUIC makes the QUIC control connection to ep.
func (c *Client) dialQUIC(ctx context.Context, ep endpoint) (Conn, error) {
	addr, err := net.ResolveUDPAddr("udp", ep.quic)
	if err != nil {
		return nil, fmt.Errorf("resolve coordinator %s: %w", ep.quic, err)
	}
	tlsConf := c.coordinatorTLS(ep)
	qc := c.quicConfig()
	if c.cfg.RequestLog {
		qc.MaxIncomingUniStreams = 1 // coordinator's request log (flow step 8)
	}
	if ep.several {
		qc.MaxIdleTimeout = failoverIdle // a dead node is noticed fast
		qc.KeepAlivePeriod = min(qc.KeepAlivePeriod, failoverIdle/2)
	}
	conn, err := c.cfg.Transport.Dial(ctx, addr, tlsConf, qc)
	if err != nil {
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			return nil, fmt.Errorf("connect to coordinator %s: %w: its certificate is not trusted for %q; "+
				"trust the CA that signed it (localproxy --ca FILE) or check the server name: %w", addr, ErrUntrustedCoordinator, ep.serverName, err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("connect to coordinator %s: no answer within %s (is coordinator running, and is UDP to that port allowed?): %w",
				addr, c.cfg.ConnectTimeout, err)
		}
		return nil, fmt.Errorf("connect to coordinator %s: %w", addr, err)
	}
	return wrapQUIC(conn), nil
}

// greet opens conn's control stream, sends hello (Hello or WorkerHello) and
// reads coordinator's Welcome, within ctx. On failure it closes conn; a
// refused token is ErrAuthFailed.
func greet(ctx context.Context, conn Conn, hello frame) (Stream, *Welcome, error) {
	fail := func(err error) (Stream, *Welcome, error) {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), "handshake failed")
		return nil, nil, authError(err)
	}
	ctrl, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return fail(fmt.Errorf("open control stream: %w", err))
	}
	if err := WriteFrame(ctrl, hello); err != nil {
		return fail(fmt.Errorf("send hello: %w", err))
	}
	if dl, ok := ctx.Deadline(); ok {
		ctrl.SetReadDeadline(dl)
	}
	msg, err := ReadFrame(ctrl)
	if err != nil {
		return fail(fmt.Errorf("read welcome: %w", err))
	}
	ctrl.SetReadDeadline(time.Time{})
	w, ok := msg.(*Welcome)
	if !ok {
		return fail(fmt.Errorf("%w: expected welcome, got %T", ErrProtocol, msg))
	}
	if w.Version != ProtocolVersion {
		return fail(fmt.Errorf("%w: coordinator speaks %d, we speak %d", ErrVersion, w.Version, ProtocolVersion))
	}
	return ctrl, w, nil
}

// quicConfig is the QUIC configuration of the client's connections, with
// its keepalive.
func (c *Client) quicConfig() *quic.Config {
	qc := QUICConfig(c.cfg.MaxStreams, c.cfg.ConnectTimeout)
	qc.KeepAlivePeriod = c.cfg.KeepAlive
	qc.Tracer = qlogTracer(c.cfg.QlogDir, c.log)
	return qc
}

// NATMapping describes the NAT's mapping behaviour from the public address
// two endpoints (the reporter and coordinator) saw for the same socket.
func NATMapping(reporter, coordinator netip.AddrPort) string {
	switch {
	case !reporter.IsValid() || !coordinator.IsValid():
		return "unknown (no reporter answer)"
	case reporter == coordinator:
		return "endpoint-independent (same public address seen by reporter and coordinator)"
	case reporter.Addr() == coordinator.Addr():
		return "address/port-dependent (symmetric NAT: public port differs per destination; dial-backs go to the port coordinator sees, else the relay is used)"
	}
	return "different public IPs seen by reporter and coordinator (multiple uplinks or NAT pools)"
}

// setDown records that the control connection is gone.
func (c *Client) setDown(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.ready = make(chan struct{})
	}
	c.conn, c.control, c.coordLeaf = nil, nil, nil
	c.registrations = nil
	c.lastErr = err
}

// markDown forgets conn as the control connection if it still is.
func (c *Client) markDown(conn Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == conn {
		c.conn, c.control, c.coordLeaf = nil, nil, nil
		c.ready = make(chan struct{})
	}
}

// Connected returns a channel closed once a control connection is up:
// coordinator accepted our Hello. While the connection is down it returns a
// channel that the next connection closes.
func (c *Client) Connected() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// DialBackAccepted returns a channel that receives a value after a
// dial-back connection is accepted (one value stands for any number).
func (c *Client) DialBackAccepted() <-chan struct{} { return c.dialBackAccepted }

// CloseDialBacks closes the dial-back connections accepted before t, with
// reason, and returns how many it closed. Their sessions end at once.
// localproxy calls it when its NAT has mapped the tunnel socket anew: the
// connections accepted while the old mapping was known to be in place
// reach it through that mapping, which is gone, and would otherwise hang
// until the QUIC idle timeout. Coordinator and workers dial back anew for
// the next session.
func (c *Client) CloseDialBacks(t time.Time, reason string) int {
	c.mu.Lock()
	var conns []*quic.Conn
	for conn, accepted := range c.dialBacks {
		if accepted.Before(t) {
			conns = append(conns, conn)
			delete(c.dialBacks, conn)
		}
	}
	c.mu.Unlock()
	return c.closeDialBacks(conns, reason)
}

// closeDialBacks closes conns, dial-back connections already taken out of
// c.dialBacks, and returns how many there were.
func (c *Client) closeDialBacks(conns []*quic.Conn, reason string) int {
	for _, conn := range conns {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeCanceled), reason)
	}
	c.stats.dialBacksClosed.Add(uint64(len(conns)))
	return len(conns)
}

// A DialBackProbe tells which of some dial-back connections still hear
// from their peer: a live one receives a packet within a keepalive period
// and a round trip (its own keepalive PING draws an acknowledgement), a
// dead one (its peer sends to a NAT mapping that is gone) receives nothing.
type DialBackProbe struct {
	c        *Client
	received map[*quic.Conn]uint64
	// Ready is when CloseSilent can tell: KeepAlive and 3 s after the
	// probe began.
	Ready time.Time
}

// ProbeDialBacks starts a probe of the dial-back connections accepted
// before t.
func (c *Client) ProbeDialBacks(t time.Time) *DialBackProbe {
	p := &DialBackProbe{c: c, received: make(map[*quic.Conn]uint64), Ready: time.Now().Add(c.cfg.KeepAlive + 3*time.Second)}
	c.mu.Lock()
	defer c.mu.Unlock()
	for conn, accepted := range c.dialBacks {
		if accepted.Before(t) {
			p.received[conn] = conn.ConnectionStats().PacketsReceived
		}
	}
	return p
}

// Len returns the number of connections probed.
func (p *DialBackProbe) Len() int { return len(p.received) }

// CloseSilent closes the probed connections still open that have received
// nothing since the probe began, with reason, and returns how many it
// closed. Call it at Ready or later.
func (p *DialBackProbe) CloseSilent(reason string) int {
	c := p.c
	var silent []*quic.Conn
	c.mu.Lock()
	for conn, n := range p.received {
		if _, open := c.dialBacks[conn]; open && conn.ConnectionStats().PacketsReceived == n {
			silent = append(silent, conn)
			delete(c.dialBacks, conn)
		}
	}
	c.mu.Unlock()
	return c.closeDialBacks(silent, reason)
}

// SetPublicAddr records a new public address and tells coordinator.
func (c *Client) SetPublicAddr(addr netip.AddrPort) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.publicAddr.IsValid() && addr != c.publicAddr {
		c.stats.addrChanges.Add(1)
	}
	c.publicAddr = addr
	if c.control == nil {
		return nil // sent in the next Hello
	}
	return WriteFrame(c.control, &AddrUpdate{PublicAddr: addr})
}

// Stats returns a snapshot of the client's state and counters.
func (c *Client) Stats() ClientStats {
	c.mu.Lock()
	st := ClientStats{Connected: c.conn != nil, PublicAddr: c.publicAddr, ObservedAddr: c.welcome.ObservedAddr,
		Transport: c.transport, TransportWhy: c.transportWhy, Candidates: c.candidatesSeen}
	if c.nodeSet {
		st.Coordinator = c.node.addr(c.transport)
	}
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		st.RTT = conn.RTT()
	}
	st.Sessions = c.stats.sessions.Load()
	st.RelaySessions = c.stats.relaySessions.Load()
	st.FastOpenSessions = c.stats.fastOpenSessions.Load()
	st.PendingSessions = c.table.len()
	st.DialBackTimeouts = c.stats.dialBackTimeouts.Load()
	st.UnknownSessions = c.stats.unknownSessions.Load()
	st.BadStreams = c.stats.badStreams.Load()
	st.Connects = c.stats.connects.Load()
	st.Failovers = c.stats.failovers.Load()
	st.Punches = c.stats.punches.Load()
	st.PublicAddrChanges = c.stats.addrChanges.Load()
	st.DialBacksClosed = c.stats.dialBacksClosed.Load()
	st.SetupLatency = c.stats.setupLatency.Snapshot()
	st.LimitHits = c.stats.limits.snapshot()
	st.Handshakes = c.guard.inHandshake()
	st.HandshakeRetries = c.guard.retries.Load()
	st.ReverseSessions = c.stats.reverseActive.Load()
	return st
}

// controlConn returns the control connection, waiting up to ConnectTimeout
// for one while it is down.
func (c *Client) controlConn(ctx context.Context) (Conn, error) {
	timer := time.NewTimer(c.cfg.ConnectTimeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		conn, ready := c.conn, c.ready
		c.mu.Unlock()
		if conn != nil {
			if conn.Context().Err() == nil {
				return conn, nil
			}
			c.markDown(conn) // the connect loop has not noticed yet
			continue
		}
		select {
		case c.kick <- struct{}{}:
		default:
		}
		select {
		case <-ready:
		case <-timer.C:
			c.mu.Lock()
			lastErr := c.lastErr // the latest attempt's outcome, not the one before the wait
			c.mu.Unlock()
			if lastErr == nil {
				lastErr = errors.New("still connecting")
			}
			return nil, fmt.Errorf("%w: %s: %w", ErrCoordinatorUnavailable, c.coordinatorName(), lastErr)
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// newlySilent records conn as found silent, reporting whether it was not
// already: the silence is logged once per connection.
func (c *Client) newlySilent(conn Conn) bool {
	c.silentMu.Lock()
	defer c.silentMu.Unlock()
	if c.silentConn == conn {
		return false
	}
	c.silentConn = conn
	return true
}
