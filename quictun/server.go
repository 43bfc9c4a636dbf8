package quictun

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlogwriter"

	"quictunnel/internal/relay"
)

// Server is the coordinator side of the tunnel: it authenticates clients,
// dials targets for them and dials back to them with each session.
type Server struct {
	cfg   ServerConfig
	log   *slog.Logger
	stats serverCounters
	guard *handshakeGuard // unauthenticated connections
	auth  *authLog        // failed authentications

	mu      sync.Mutex
	peers   map[*peer]struct{}
	workers map[*workerPeer]int // dial-back workers, with the number of clients each serves
	ln      *quic.Listener
	tcpLns  map[net.Listener]struct{} // ServeTCP's, closed by Drain

	sessions drainGate // sessions being set up or relayed
}

type serverCounters struct {
	clients, sessions, activeSessions              atomic.Int64
	targetErrors, targetsForbidden, dialBackErrors atomic.Int64
	dialBackDials                                  atomic.Int64
	dialBackSessions, relaySessions                atomic.Int64
	fastOpenSessions                               atomic.Int64
	bytesUp, bytesDown                             atomic.Int64
	setupLatency, dialBackLatency                  Histogram
	limits                                         limitHits
}

// ServerStats is a snapshot of a Server's counters. Up is client→target.
type ServerStats struct {
	Clients int // connected now
	Workers int // dial-back workers connected now
	// AuthFailures counts connections refused before authenticating;
	// AuthFailuresByReason splits them by reason (AuthInvalidToken...).
	AuthFailures         int64
	AuthFailuresByReason map[string]int64
	// Handshakes counts connections not yet authenticated now (see
	// HandshakeLimits); HandshakeRetries the connection attempts asked to
	// answer a Retry first.
	Handshakes       int
	HandshakeRetries int64
	Sessions         int64 // established since start
	ActiveSessions   int64
	TargetErrors     int64
	// TargetsForbidden counts sessions refused by policy: the token may
	// not use the forward proxy, or DialTarget refused the target.
	TargetsForbidden int64
	DialBackErrors   int64
	DialBackDials    int64 // dial-back connections attempted by coordinator itself
	// DialBackSessions, RelaySessions and FastOpenSessions split Sessions
	// by path.
	DialBackSessions int64
	RelaySessions    int64
	FastOpenSessions int64
	BytesUp          int64
	BytesDown        int64
	// SetupLatency is the time from an Open to its session being ready;
	// DialBackLatency the part spent getting an acknowledged dial-back
	// stream (sessions that went over dial-back only).
	SetupLatency    HistogramSnapshot
	DialBackLatency HistogramSnapshot
	// LimitHits counts, by limit name (LimitSessionsPerClient,
	// LimitClients, LimitHandshakes, LimitHandshakesPerSource), the
	// sessions, clients and connection attempts refused for a limit.
	LimitHits map[string]int64
	// WorkersDraining counts the connected workers that take no more
	// clients (Worker.Drain).
	WorkersDraining int
}

// NewServer validates cfg and prepares a server. Serve starts it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger, peers: make(map[*peer]struct{}), workers: make(map[*workerPeer]int)}
	s.guard = newHandshakeGuard(cfg.Handshakes, cfg.Logger, &s.stats.limits)
	s.auth = newAuthLog(cfg.Logger, authLogEvery)
	return s, nil
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	n, nw := len(s.peers), len(s.workers)
	nd := 0
	for w := range s.workers {
		if w.draining.Load() {
			nd++
		}
	}
	s.mu.Unlock()
	byReason, failures := s.auth.counts()
	return ServerStats{
		Clients:              n,
		Workers:              nw,
		WorkersDraining:      nd,
		AuthFailures:         failures,
		AuthFailuresByReason: byReason,
		Handshakes:           s.guard.inHandshake(),
		HandshakeRetries:     s.guard.retries.Load(),
		Sessions:             s.stats.sessions.Load(),
		ActiveSessions:       s.stats.activeSessions.Load(),
		TargetErrors:         s.stats.targetErrors.Load(),
		TargetsForbidden:     s.stats.targetsForbidden.Load(),
		DialBackErrors:       s.stats.dialBackErrors.Load(),
		DialBackDials:        s.stats.dialBackDials.Load(),
		DialBackSessions:     s.stats.dialBackSessions.Load(),
		RelaySessions:        s.stats.relaySessions.Load(),
		FastOpenSessions:     s.stats.fastOpenSessions.Load(),
		BytesUp:              s.stats.bytesUp.Load(),
		BytesDown:            s.stats.bytesDown.Load(),
		SetupLatency:         s.stats.setupLatency.Snapshot(),
		DialBackLatency:      s.stats.dialBackLatency.Snapshot(),
		LimitHits:            s.stats.limits.snapshot(),
	}
}

// Serve accepts clients on the transport until ctx ends, then closes every
// connection and waits for every session to end.
func (s *Server) Serve(ctx context.Context) error {
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPNControl, ALPNWorker},
	}
	s.setCertificate(tlsConf)
	if s.cfg.ClientCAs != nil {
		// Workers present none; clients must (checked in serveClient).
		tlsConf.ClientAuth, tlsConf.ClientCAs = tls.VerifyClientCertIfGiven, s.cfg.ClientCAs
	}
	qc := QUICConfig(s.cfg.MaxStreams, s.cfg.HelloTimeout)
	qc.Tracer = qlogTracer(s.cfg.QlogDir, s.cfg.Logger)
	s.guard.install(s.cfg.Transport)
	defer s.auth.close() // after every client's goroutine has ended
	ln, err := s.cfg.Transport.Listen(tlsConf, qc)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	s.mu.Lock()
	s.ln = ln
	if s.sessions.isStopped() {
		ln.Close()
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if s.sessions.isStopped() {
				<-ctx.Done() // the clients connected still have sessions to finish
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		wg.Go(func() { s.serveClient(ctx, wrapQUIC(conn)) })
	}
}

// serveClient authenticates one control connection and serves its
// sessions until it or ctx ends.
func (s *Server) serveClient(ctx context.Context, conn Conn) {
	log := s.log.With("client_addr", conn.RemoteAddr())
	stop := context.AfterFunc(ctx, func() {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeShutdown), "coordinator shutting down")
	})
	defer stop()
	if qc := quicOf(conn); qc != nil && conn.TLS().NegotiatedProtocol == ALPNWorker {
		s.serveWorker(ctx, qc, log)
		return
	}

	src := sourceOf(conn.RemoteAddr())
	hello, ctrl, reason, err := s.readHello(ctx, conn)
	switch {
	case err == nil:
	case choseAnother(err):
		log.Debug("a client chose another coordinator (several were dialed, the nearest won)")
		return
	case ctx.Err() == nil:
		s.auth.fail(src, reason, "client refused", "client_addr", conn.RemoteAddr(), "err", err)
		return
	default:
		return
	}
	p := &peer{s: s, conn: conn, name: hello.ClientName, certHash: hello.CertSHA256, publicAddr: hello.PublicAddr,
		cert: s.certificateFor(conn)}
	grant, reason, why := s.authenticate(conn, hello, p)
	if reason != "" {
		s.auth.fail(src, reason, "client refused: "+why, "client_addr", conn.RemoteAddr(), "client", hello.ClientName, "identity", p.identity)
		conn.CloseWithError(quic.ApplicationErrorCode(CodeUnauthorized), why)
		return
	}
	authenticated(conn)
	p.grant = grant
	if grant.Client != "" {
		p.name = grant.Client
	}
	p.log = log.With("client", p.name)
	p.requests = newRequestLog(conn, p.log)
	welcome := &Welcome{Version: ProtocolVersion, ObservedAddr: p.observedAddr()}
	if a, ok := s.cfg.Transport.Conn.LocalAddr().(*net.UDPAddr); ok {
		welcome.DialBackFrom = a.AddrPort()
	}
	if !s.addPeer(p) {
		s.stats.limits.hit(s.log, LimitClients, "client refused: too many clients connected",
			"client", p.name, "client_addr", conn.RemoteAddr(), "max_clients", s.cfg.MaxClients)
		conn.CloseWithError(quic.ApplicationErrorCode(CodeLimit),
			fmt.Sprintf("coordinator has %d clients connected, its limit (max-clients)", s.cfg.MaxClients))
		return
	}
	defer s.removePeer(p)
	if err := WriteFrame(ctrl, welcome); err != nil {
		log.Warn("client lost during handshake", "err", err)
		return
	}
	p.log.Info("client connected", "public_addr", p.publicAddr, "observed_addr", welcome.ObservedAddr)
	var wg sync.WaitGroup
	defer wg.Wait()
	rctx, stopRequests := context.WithCancel(ctx)
	defer stopRequests()
	wg.Go(func() { p.requests.run(rctx) })
	p.serve(ctx, ctrl)
	p.log.Info("client disconnected", "reason", context.Cause(conn.Context()))
}

// authenticate checks a new client by its certificate (with ClientCAs)
// or its token, and sets p's identity or token and owner. On refusal it
// returns the reason (AuthInvalidToken...) and why in words, which is sent
// to the client.
func (s *Server) authenticate(conn Conn, hello *Hello, p *peer) (grant Grant, reason, why string) {
	if s.cfg.ClientCAs == nil {
		grant, ok := s.cfg.Authorize(hello.Token)
		if !ok {
			return Grant{}, AuthInvalidToken, "invalid token"
		}
		tokenHash := sha256.Sum256([]byte(hello.Token))
		p.token, p.owner = hello.Token, hex.EncodeToString(tokenHash[:8])+"/"+hello.ClientName
		return grant, "", ""
	}
	chains := conn.TLS().VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return Grant{}, AuthCertificate, "client certificate required"
	}
	p.identity = certIdentity(chains[0][0])
	if p.identity == "" {
		return Grant{}, AuthCertificate, "client certificate names no one (no common name or DNS name)"
	}
	grant, ok := s.cfg.AuthorizeCert(p.identity)
	if !ok {
		return Grant{}, AuthCertificate, fmt.Sprintf("certificate identity %q is not authorized", p.identity)
	}
	p.owner = "cert/" + p.identity
	return grant, "", ""
}

// certIdentity names a client certificate's holder: its subject common
// name, else its first DNS name.
func certIdentity(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return ""
}

// readHello reads a new client's Hello, on the first stream it opens,
// within HelloTimeout. On failure it closes conn and returns the reason
// (AuthNoHello or AuthBadHello).
func (s *Server) readHello(ctx context.Context, conn Conn) (*Hello, Stream, string, error) {
	msg, ctrl, reason, err := readFirstFrame(ctx, conn, s.cfg.HelloTimeout)
	if err != nil {
		return nil, nil, reason, err
	}
	hello, ok := msg.(*Hello)
	if !ok {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), "expected hello")
		return nil, nil, AuthBadHello, fmt.Errorf("%w: expected hello, got %T", ErrProtocol, msg)
	}
	if hello.Version != ProtocolVersion {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeVersion), fmt.Sprintf("coordinator speaks version %d", ProtocolVersion))
		return nil, nil, AuthBadHello, fmt.Errorf("%w: client speaks %d", ErrVersion, hello.Version)
	}
	return hello, ctrl, "", nil
}

// readFirstFrame accepts the first stream a new connection opens and
// reads one frame from it (a Hello or WorkerHello), within timeout. A peer
// opens nothing else before coordinator's Welcome, so a second stream
// meanwhile closes the connection: an unauthenticated peer gets no buffers
// beyond the one stream. On failure it closes conn and returns the reason
// (AuthNoHello or AuthBadHello).
func readFirstFrame(ctx context.Context, conn Conn, timeout time.Duration) (any, Stream, string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ctrl, err := conn.AcceptStream(ctx)
	if err != nil {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeTimeout), "no hello")
		return nil, nil, AuthNoHello, fmt.Errorf("no control stream: %w", err)
	}
	var early atomic.Bool
	var watch sync.WaitGroup
	watch.Go(func() {
		if str, err := conn.AcceptStream(ctx); err == nil {
			early.Store(true)
			str.CancelRead(quic.StreamErrorCode(CodeProtocol))
			str.CancelWrite(quic.StreamErrorCode(CodeProtocol))
			conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), "stream opened before welcome")
		}
	})
	deadline, _ := ctx.Deadline()
	ctrl.SetReadDeadline(deadline)
	msg, err := ReadFrame(ctrl)
	ctrl.SetReadDeadline(time.Time{})
	cancel()
	watch.Wait()
	switch {
	case early.Load():
		return nil, nil, AuthBadHello, fmt.Errorf("%w: stream opened before welcome", ErrProtocol)
	case errors.Is(err, os.ErrDeadlineExceeded):
		conn.CloseWithError(quic.ApplicationErrorCode(CodeTimeout), "no hello")
		return nil, nil, AuthNoHello, fmt.Errorf("read hello: %w", err)
	case err != nil:
		conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), "bad hello")
		return nil, nil, AuthBadHello, fmt.Errorf("read hello: %w", err)
	}
	return msg, ctrl, "", nil
}

// Drain stops accepting clients and sessions (new Opens are answered
// CodeShutdown) and waits for the sessions in progress to end. It returns
// nil once none is left, or ctx's cause when ctx ends first. Ending
// Serve's context then closes everything.
func (s *Server) Drain(ctx context.Context) error {
	s.sessions.stop()
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	for ln := range s.tcpLns {
		ln.Close()
	}
	s.mu.Unlock()
	return s.sessions.wait(ctx)
}

// Reauthorize checks every connected client's token again with
// ServerConfig.Authorize (which may have changed, e.g. a tokens file
// reloaded): a client whose token is no longer valid is disconnected with
// CodeUnauthorized, which withdraws its services and ends its sessions;
// the others get their new grant for later sessions and registrations.
// It returns how many clients were disconnected.
func (s *Server) Reauthorize() int {
	s.mu.Lock()
	peers := make([]*peer, 0, len(s.peers))
	for p := range s.peers {
		peers = append(peers, p)
	}
	s.mu.Unlock()
	n := 0
	for _, p := range peers {
		authorize, what := s.cfg.Authorize, "token"
		id := p.token
		if p.identity != "" {
			authorize, what, id = s.cfg.AuthorizeCert, "certificate identity", p.identity
		}
		grant, ok := authorize(id)
		if !ok {
			p.log.Warn("client disconnected: " + what + " revoked")
			p.conn.CloseWithError(quic.ApplicationErrorCode(CodeUnauthorized), what+" revoked")
			n++
			continue
		}
		p.mu.Lock()
		p.grant = grant
		p.mu.Unlock()
	}
	return n
}

// beginSession counts a forward session of p in; it reports false when p
// has MaxSessionsPerClient open.
func (p *peer) beginSession() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sessions >= p.s.cfg.MaxSessionsPerClient {
		return false
	}
	p.sessions++
	return true
}

func (p *peer) endSession() {
	p.mu.Lock()
	p.sessions--
	p.mu.Unlock()
}

func (p *peer) currentGrant() Grant {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.grant
}

// addPeer counts p in; it reports false when MaxClients are connected.
func (s *Server) addPeer(p *peer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.peers) >= s.cfg.MaxClients {
		return false
	}
	s.peers[p] = struct{}{}
	return true
}

func (s *Server) removePeer(p *peer) {
	s.mu.Lock()
	delete(s.peers, p)
	s.mu.Unlock()
}

// peer is one authenticated localproxy.
type peer struct {
	s        *Server
	conn     Conn
	name     string
	log      *slog.Logger
	token    string // kept to check again on Reauthorize
	identity string // from the client certificate, with ClientCAs; checked again on Reauthorize
	owner    string // token hash and client name, see Service.Owner
	certHash [32]byte
	cert     tls.Certificate // ours, as the client saw it when it connected
	requests *requestLog     // records of public requests to its apps

	mu         sync.Mutex
	sessions   int   // forward sessions open, up to MaxSessionsPerClient
	grant      Grant // may change on Reauthorize
	publicAddr netip.AddrPort
	services   []*Service
	relayUntil time.Time // sessions go over the relay until then
	relayErr   error     // why

	dialMu   sync.Mutex // serialises dial-back connection set-up; guards the fields below
	dialBack *quic.Conn
	// dialBackObserved is the client's address as coordinator saw it when
	// dialBack was dialed.
	dialBackObserved netip.AddrPort
	dialBackAddr     netip.AddrPort // the address dialBack was dialed to
	dialRefs         connRefs       // sessions on each dial-back connection
	worker           *workerPeer    // the dial-back worker serving this client, if any
}

// observedAddr is the client's address as coordinator sees it now. quic-go
// moves the control connection to a client's new address when its NAT maps
// it anew (a rebinding), so this follows the client where the address seen
// at connect time would not.
func (p *peer) observedAddr() netip.AddrPort {
	a, ok := p.conn.RemoteAddr().(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// serve reads control messages and serves session requests until the
// connection ends.
func (p *peer) serve(ctx context.Context, ctrl Stream) {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer p.withdrawServices()
	defer p.releaseWorker()
	defer p.closeDialBacks()
	wg.Go(func() { p.readControl(ctrl) })
	for {
		str, err := p.conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		wg.Go(func() { p.serveStream(ctx, str) })
	}
}

// readControl handles messages on the control stream; it ends with the
// connection.
func (p *peer) readControl(ctrl Stream) {
	for {
		msg, err := ReadFrame(ctrl)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				return
			}
			p.conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), err.Error())
			return
		}
		switch m := msg.(type) {
		case *AddrUpdate:
			p.mu.Lock()
			old := p.publicAddr
			if old == m.PublicAddr {
				// localproxy's idle timer confirms its address: the
				// dial-back connection still fits it.
				p.mu.Unlock()
				p.log.Debug("client confirmed its public address", "addr", old)
				continue
			}
			p.publicAddr = m.PublicAddr
			p.relayUntil = time.Time{} // a new address deserves a new dial-back attempt
			p.mu.Unlock()
			p.log.Info("client public address changed", "old", old, "new", m.PublicAddr)
			p.retireDialBack() // the next session dials the new address; live ones finish
		default:
			p.conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), fmt.Sprintf("unexpected %T on control stream", msg))
			return
		}
	}
}

// serveStream handles a stream the client opened: Open or Register.
func (p *peer) serveStream(ctx context.Context, str Stream) {
	str.SetReadDeadline(time.Now().Add(p.s.cfg.HelloTimeout))
	msg, err := ReadFrame(str)
	if err != nil {
		str.CancelRead(quic.StreamErrorCode(CodeProtocol))
		str.CancelWrite(quic.StreamErrorCode(CodeProtocol))
		return
	}
	str.SetReadDeadline(time.Time{})
	if open, ok := msg.(*Open); ok {
		p.serveSession(ctx, str, open) // the stream may carry the session (relay)
		return
	}
	str.CancelRead(quic.StreamErrorCode(CodeOK)) // nothing more comes on it
	switch m := msg.(type) {
	case *Register:
		p.serveRegister(str, m)
	default:
		str.CancelWrite(quic.StreamErrorCode(CodeProtocol))
	}
}

// serveSession handles one Open: dial the target, answer, dial back and
// relay.
func (p *peer) serveSession(ctx context.Context, str Stream, open *Open) {
	start := time.Now()
	log := p.log.With("session", open.Session, "target", open.Target)
	outcome := func(status string, err error, st relay.Stats) {
		attrs := []any{"session", open.Session, "client", p.name, "client_addr", p.conn.RemoteAddr(),
			"target", open.Target, "bytes_up", st.AToB, "bytes_down", st.BToA,
			"duration", time.Since(start).Round(time.Microsecond), "outcome", status}
		if err != nil {
			attrs = append(attrs, "err", err)
		}
		p.s.cfg.AccessLog.Info("session", attrs...)
	}

	// Until the relay is chosen nothing more comes from the client.
	endOpen := func() {
		str.CancelRead(quic.StreamErrorCode(CodeOK))
		str.Close()
	}
	if !p.s.sessions.begin() {
		WriteFrame(str, &OpenResult{Code: CodeShutdown, Reason: "coordinator is shutting down"})
		endOpen()
		outcome("shutting_down", nil, relay.Stats{})
		return
	}
	defer p.s.sessions.end()
	if !p.beginSession() {
		max := p.s.cfg.MaxSessionsPerClient
		p.s.stats.limits.hit(p.log, LimitSessionsPerClient, "session refused: client has too many sessions open",
			"max_sessions_per_client", max)
		WriteFrame(str, &OpenResult{Code: CodeLimit,
			Reason: fmt.Sprintf("this client has %d sessions open, coordinator's limit (max-sessions-per-client)", max)})
		endOpen()
		outcome("limit", nil, relay.Stats{})
		return
	}
	endSession := sync.OnceFunc(p.endSession)
	defer endSession()
	if p.currentGrant().NoForward {
		p.s.stats.targetsForbidden.Add(1)
		WriteFrame(str, &OpenResult{Code: CodeTargetForbidden, Reason: "this token may not use the forward proxy"})
		endOpen()
		outcome("forbidden", nil, relay.Stats{})
		return
	}
	if quicOf(p.conn) != nil { // workers dial back: not to a client on TCP
		if w := p.pickWorker(); w != nil && !open.Fast {
			if p.serveViaWorker(ctx, w, str, open, outcome) {
				return
			}
		}
	}
	// The set-up's deep calls run on a goroutine of their own (see
	// onFreshStack); this one lives on, mostly idle, as the relay.
	su := onFreshStack(func() sessionSetup { return p.setUpSession(ctx, str, open, log, outcome, endOpen) })
	if su.release != nil {
		defer su.release()
	}
	if su.sess == nil {
		return // refused or failed, answered and logged
	}
	sess, target, mode := su.sess, su.target, su.mode

	p.s.stats.setupLatency.Observe(time.Since(start))
	p.s.stats.sessions.Add(1)
	p.s.stats.activeSessions.Add(1)
	st, err := relay.Splice(ctx, sess, target)
	endSession() // first: a session counted as ended has freed its place
	p.s.stats.activeSessions.Add(-1)
	p.s.stats.bytesUp.Add(st.AToB)
	p.s.stats.bytesDown.Add(st.BToA)
	outcome(Outcome(err)+" ("+mode+")", err, st)
}

// sessionSetup is a forward session ready to relay (sess set), or one that
// was refused or failed, answered and logged (sess nil).
type sessionSetup struct {
	sess, target net.Conn
	mode         string // "dial-back", "relay", "tcp" (the client is on the TCP transport) or "fast-open"
	release      func() // if set, ends its use of its dial-back connection (see connRefs)
}

// setUpSession dials the target, answers Open and dials back (or falls
// back to the relay); a FastOpen is relayed on its own stream.
func (p *peer) setUpSession(ctx context.Context, str Stream, open *Open, log *slog.Logger,
	outcome func(string, error, relay.Stats), endOpen func()) (su sessionSetup) {
	dctx, cancel := context.WithTimeout(ctx, p.s.cfg.TargetDialTimeout)
	target, err := p.s.cfg.DialTarget(dctx, "tcp", open.Target)
	cancel()
	if errors.Is(err, ErrTargetForbidden) {
		p.s.stats.targetsForbidden.Add(1)
		WriteFrame(str, &OpenResult{Code: CodeTargetForbidden, Reason: err.Error()})
		endOpen()
		outcome("forbidden", err, relay.Stats{})
		return su
	}
	if err != nil {
		p.s.stats.targetErrors.Add(1)
		WriteFrame(str, &OpenResult{Code: CodeTargetUnreachable, Reason: err.Error()})
		endOpen()
		outcome("target_unreachable", err, relay.Stats{})
		return su
	}
	if err := WriteFrame(str, &OpenResult{Code: CodeOK}); err != nil {
		target.Close()
		str.CancelRead(quic.StreamErrorCode(CodeCanceled))
		outcome("client_gone", err, relay.Stats{})
		return su
	}
	if open.Fast {
		// The client's bytes already follow the FastOpen on this stream.
		su.sess, su.mode, su.target = newStreamConn(str, p.conn, open.Session), "fast-open", target
		p.s.stats.fastOpenSessions.Add(1)
		return su
	}
	dialBackStart := time.Now()
	var stream *StreamConn
	overTCP := quicOf(p.conn) == nil
	if overTCP {
		err = errTCPNoDialBack // the session rides the client's own connection
	} else {
		stream, err = p.dialBackSession(ctx, open.Session)
	}
	if errors.Is(err, errSessionAbandoned) {
		target.Close()
		str.CancelWrite(quic.StreamErrorCode(CodeCanceled))
		str.CancelRead(quic.StreamErrorCode(CodeCanceled))
		outcome("client_gone", err, relay.Stats{})
		return su
	}
	switch {
	case err == nil:
		// The caller ends the session's use of the connection when it ends.
		su.release = func() { p.releaseDialBack(quicOf(stream.conn)) }
		finishOpen(str) // the session goes over the dial-back stream
		su.sess, su.mode = stream, "dial-back"
		p.s.stats.dialBackLatency.Observe(time.Since(dialBackStart))
		p.s.stats.dialBackSessions.Add(1)
	case p.s.cfg.DisableRelay && !overTCP:
		p.s.stats.dialBackErrors.Add(1)
		str.CancelWrite(quic.StreamErrorCode(CodeDialBackFailed))
		str.CancelRead(quic.StreamErrorCode(CodeDialBackFailed))
		target.Close()
		log.Warn("dial-back failed", "err", err)
		outcome("dial_back_failed", err, relay.Stats{})
		return su
	default:
		// Carry the session over the client's own connection instead.
		if _, err := str.Write([]byte{relayMarker}); err != nil {
			target.Close()
			str.CancelRead(quic.StreamErrorCode(CodeCanceled))
			outcome("client_gone", err, relay.Stats{})
			return su
		}
		su.sess, su.mode = newStreamConn(str, p.conn, open.Session), "relay"
		if overTCP {
			su.mode = TransportTCP
		}
		p.s.stats.relaySessions.Add(1)
	}
	su.target = target
	return su
}

// finishOpen ends an Open stream whose session went over a dial-back
// stream: a FIN, and localproxy's FIN taken (it sends one when the
// dial-back stream reaches it), so the stream ends without STOP_SENDING or
// RESET_STREAM, in fewer packets. The FIN is waited for on a goroutine of
// its own, bounded by openEndTimeout and by the connection.
func finishOpen(str Stream) {
	str.Close()
	str.SetReadDeadline(time.Now().Add(openEndTimeout))
	go func() {
		var b [1]byte
		if _, err := str.Read(b[:]); !errors.Is(err, io.EOF) {
			str.CancelRead(quic.StreamErrorCode(CodeOK))
		}
	}()
}

// dialBackSession opens session id's stream on the dial-back connection
// and waits for the client's ack. A dial-back connection the client closed
// on purpose (Client.CloseDialBacks, after its NAT mapped it anew) is no
// failed dial-back: the close may not have been heard of when the
// connection was chosen for this session, so it dials back anew, once,
// instead of relaying the client's sessions for relayRetry.
func (p *peer) dialBackSession(ctx context.Context, id SessionID) (*StreamConn, error) {
	wait := p.s.cfg.DialBackTimeout
	if !p.s.cfg.DisableRelay {
		wait = p.s.cfg.RelayAfter
	}
	for retried := false; ; retried = true {
		stream, conn, err := p.openDialBack(ctx, id)
		if err == nil {
			if err = awaitAck(stream, wait); err == nil {
				return stream, nil
			}
			stream.Reset()
			p.releaseDialBack(conn)
			if errors.Is(err, errSessionAbandoned) {
				return nil, err // the connection answered: it works
			}
		}
		if !retried && closedByClient(conn, err) {
			p.log.Debug("dial-back connection closed by the client meanwhile: dialing back anew", "err", err)
			p.dropDialBack(conn) // its context may not have ended yet
			continue
		}
		if stream != nil {
			p.closeDialBack() // silent: dead, or the NAT no longer lets it in
			p.noteDialBackFailure(err)
		}
		return nil, err
	}
}

// closedByClient reports whether err, or conn's end, is the client
// closing conn on purpose (CodeCanceled, as Client.CloseDialBacks does)
// rather than it being lost. A stream may fail with the close before the
// connection's context ends.
func closedByClient(conn *quic.Conn, err error) bool {
	if conn == nil {
		return false
	}
	if conn.Context().Err() != nil {
		err = context.Cause(conn.Context())
	}
	var ae *quic.ApplicationError
	return errors.As(err, &ae) && ae.Remote && ae.ErrorCode == quic.ApplicationErrorCode(CodeCanceled)
}

// openDialBack opens a stream for session id on the dial-back connection,
// dialing that connection first if needed, and writes the session header.
// It returns the connection it used, if any, also on failure.
func (p *peer) openDialBack(ctx context.Context, id SessionID) (*StreamConn, *quic.Conn, error) {
	timeout := p.s.cfg.DialBackTimeout
	if !p.s.cfg.DisableRelay {
		if err := p.relaying(); err != nil {
			return nil, nil, err // dial-back failed lately: go straight to the relay
		}
		timeout = min(timeout, p.s.cfg.RelayAfter)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := p.dialBackConn(ctx)
	if err != nil {
		p.noteDialBackFailure(err)
		return nil, nil, err
	}
	s, err := openDialBackStream(ctx, conn, id)
	if err != nil {
		p.releaseDialBack(conn)
	}
	return s, conn, err
}

// dialBackConn returns the dial-back connection to this client, dialing it
// if there is none.
func (p *peer) dialBackConn(ctx context.Context) (*quic.Conn, error) {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	observed := p.observedAddr()
	if p.dialBack != nil && p.dialBack.Context().Err() == nil {
		if observed == p.dialBackAddr {
			// The control connection's move caught up with a dial-back
			// already made to the new (reported) address.
			p.dialBackObserved = observed
		}
		if observed == p.dialBackObserved {
			p.dialRefs.add(p.dialBack)
			return p.dialBack, nil
		}
		// The control connection moved: the client's NAT mapped it anew,
		// and the dial-back connection, which came in through the old
		// mapping, most likely no longer gets in.
		p.log.Info("client's address changed since its dial-back connection was made (its NAT mapped it anew?): dialing back anew",
			"was", p.dialBackObserved, "now", observed)
		p.retireDialBackLocked()
	}
	// The address coordinator observes first: dial-backs leave from the
	// socket the control connection uses, so that is the NAT mapping that
	// lets them in, whatever the NAT's type. Then the reported address,
	// which differs behind a NAT that maps per destination.
	p.mu.Lock()
	reported := p.publicAddr
	p.mu.Unlock()
	var addrs []netip.AddrPort
	for _, a := range []netip.AddrPort{observed, reported} {
		if a.IsValid() && !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	p.s.stats.dialBackDials.Add(1)
	conn, addr, err := dialBackTo(ctx, p.s.cfg.Transport, p.cert, p.certHash, addrs, qlogTracer(p.s.cfg.QlogDir, p.log))
	if err != nil {
		return nil, err
	}
	p.log.Info("dial-back connection established", "addr", addr)
	p.dialBack, p.dialBackObserved, p.dialBackAddr = conn, observed, addr
	p.dialRefs.add(conn)
	return conn, nil
}

// dialBackTo dials a client's tunnel creation service at each address in
// turn, sharing ctx's time among them, and returns the first connection
// established. The client must present the certificate whose SHA-256 is
// certHash; we present cert, the one it pinned.
func dialBackTo(ctx context.Context, tr *quic.Transport, cert tls.Certificate, certHash [32]byte, addrs []netip.AddrPort,
	tracer func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace) (*quic.Conn, netip.AddrPort, error) {
	if len(addrs) == 0 {
		return nil, netip.AddrPort{}, errors.New("no address to dial back to")
	}
	tlsConf := &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{cert},
		ServerName:            dialBackServerName,
		InsecureSkipVerify:    true, // verified by VerifyPeerCertificate: pinned to the hash from Hello
		VerifyPeerCertificate: verifyPinnedHash(certHash),
		NextProtos:            []string{ALPNDialBack},
	}
	handshake := 10 * time.Second
	if deadline, ok := ctx.Deadline(); ok {
		handshake = time.Until(deadline)
	}
	var errs []error
	for i, addr := range addrs {
		dctx := ctx
		if deadline, ok := ctx.Deadline(); ok && i < len(addrs)-1 {
			// Leave the later addresses their share of the time.
			var cancel context.CancelFunc
			dctx, cancel = context.WithTimeout(ctx, time.Until(deadline)/time.Duration(len(addrs)-i))
			defer cancel()
		}
		qc := QUICConfig(-1, max(handshake, time.Second))
		qc.Tracer = tracer
		conn, err := tr.Dial(dctx, net.UDPAddrFromAddrPort(addr), tlsConf, qc)
		if err != nil {
			errs = append(errs, fmt.Errorf("dial back %s: %w", addr, err))
			continue
		}
		return conn, addr, nil
	}
	return nil, netip.AddrPort{}, errors.Join(errs...)
}

// openDialBackStream opens a stream for session id on a dial-back
// connection and writes the session header.
func openDialBackStream(ctx context.Context, conn *quic.Conn, id SessionID) (*StreamConn, error) {
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("open dial-back stream: %w", err)
	}
	if _, err := s.Write(AppendSessionHeader(make([]byte, 0, SessionHeaderSize), id)); err != nil {
		s.CancelWrite(quic.StreamErrorCode(CodeCanceled))
		s.CancelRead(quic.StreamErrorCode(CodeCanceled))
		return nil, fmt.Errorf("write session header: %w", err)
	}
	return newStreamConn(s, wrapQUIC(conn), id), nil
}

// awaitAck waits up to wait for localproxy's dialBackAck on a new dial-back
// stream: proof that the dial-back connection still reaches it. A reset
// from localproxy is proof too, of a session given up meanwhile (its ack
// may be lost with the reset): errSessionAbandoned.
func awaitAck(s *StreamConn, wait time.Duration) error {
	s.SetReadDeadline(time.Now().Add(wait))
	defer s.SetReadDeadline(time.Time{})
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil {
		if se := (*quic.StreamError)(nil); errors.As(err, &se) && se.Remote {
			return fmt.Errorf("%w: dial-back stream reset: %w", errSessionAbandoned, err)
		}
		return fmt.Errorf("dial-back stream not acknowledged within %s: %w", wait, err)
	}
	if b[0] != dialBackAck {
		return fmt.Errorf("%w: dial-back stream answered 0x%02x, want ack", ErrProtocol, b[0])
	}
	return nil
}

// relayRetry is how long a client whose dial-back failed is served over
// the relay before a dial-back is tried again.
const relayRetry = time.Minute

// noteDialBackFailure switches p to the relay for relayRetry, logging the
// reason once per switch.
func (p *peer) noteDialBackFailure(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.relayUntil.IsZero() || time.Now().After(p.relayUntil) {
		if p.s.cfg.DisableRelay {
			p.log.Warn("dial-back failed", "err", err)
		} else {
			p.log.Warn("dial-back failed: carrying this client's sessions over its own connection (relay)",
				"reason", err, "retry_dial_back_in", relayRetry)
		}
	}
	p.relayUntil = time.Now().Add(relayRetry)
	p.relayErr = err
}

// relaying returns why p is being relayed, or nil when a dial-back should
// be tried.
func (p *peer) relaying() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Now().Before(p.relayUntil) {
		return fmt.Errorf("relaying since dial-back failed: %w", p.relayErr)
	}
	return nil
}

// releaseDialBack ends a session's use of conn, closing conn if it was
// retired and this was its last session.
func (p *peer) releaseDialBack(conn *quic.Conn) {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	if p.dialRefs.done(conn) {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeOK), "client address changed")
	}
}

// retireDialBack stops giving new sessions the current dial-back
// connection, without cutting the sessions on it.
func (p *peer) retireDialBack() {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	p.retireDialBackLocked()
}

// dropDialBack stops giving new sessions conn, a dial-back connection the
// client closed, if it is still the current one.
func (p *peer) dropDialBack(conn *quic.Conn) {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	if p.dialBack == conn {
		p.retireDialBackLocked()
	}
}

// retireDialBackLocked is retireDialBack with p.dialMu held.
func (p *peer) retireDialBackLocked() {
	if c := p.dialBack; c != nil {
		p.dialBack = nil
		if p.dialRefs.retire(c) {
			c.CloseWithError(quic.ApplicationErrorCode(CodeOK), "client address changed")
		}
	}
}

// closeDialBacks closes every dial-back connection: the client is gone.
func (p *peer) closeDialBacks() {
	p.closeDialBack()
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	for _, c := range p.dialRefs.takeRetired() {
		c.CloseWithError(quic.ApplicationErrorCode(CodeShutdown), "control connection closed")
	}
}

func (p *peer) closeDialBack() {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	if p.dialBack != nil {
		p.dialBack.CloseWithError(quic.ApplicationErrorCode(CodeShutdown), "control connection closed")
		p.dialBack = nil
	}
}

// setCertificate makes conf serve Certificate, or GetCertificate's.
func (s *Server) setCertificate(conf *tls.Config) {
	if s.cfg.GetCertificate != nil {
		conf.GetCertificate = s.cfg.GetCertificate
		return
	}
	conf.Certificates = []tls.Certificate{s.cfg.Certificate}
}

// certificateFor is the certificate conn's client was served, to present
// on its dial-backs: GetCertificate's for its server name (the one in use
// when it connected, unless a renewal came within the instant since), or
// Certificate.
func (s *Server) certificateFor(conn Conn) tls.Certificate {
	if s.cfg.GetCertificate == nil {
		return s.cfg.Certificate
	}
	cert, err := s.cfg.GetCertificate(&tls.ClientHelloInfo{ServerName: conn.TLS().ServerName})
	if err != nil || cert == nil {
		return s.cfg.Certificate
	}
	return *cert
}
