package quictun

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/internal/relay"
)

// Reverse direction: localproxy exposes local apps, coordinator publishes
// them and opens a stream on the control connection per public connection.

// Timeouts of a reverse session set-up.
const (
	// reverseAckTimeout bounds the wait for ReverseAck: a client that does
	// not acknowledge within it (plus a few RTTs) is taken for gone.
	reverseAckTimeout = 1500 * time.Millisecond
	// reverseSlowAckLimit bounds the wait for a client that is alive (its
	// QUIC stack answers) but slow to take a reverse session.
	reverseSlowAckLimit = 10 * time.Second
	// localDialTimeout bounds localproxy dialing a local app.
	localDialTimeout = 5 * time.Second
)

// ExposedService is a local app a client exposes through coordinator.
type ExposedService struct {
	Kind  ServiceKind
	Name  string // public name, e.g. "app" for app.DOMAIN
	Port  uint16 // public port wanted; 0: none (http) or any (tcp)
	Local string // the local app, "host:port"
	// HostHeader, if set (http only), replaces the Host header of the
	// requests the app receives, e.g. with Local: development servers
	// that refuse unknown host names (Vite, webpack, Rails, Django) then
	// accept them. X-Forwarded-Host still carries the public name.
	HostHeader string
	// BasicAuth, if set (http only), makes coordinator ask the public
	// for these HTTP Basic credentials before a request reaches the app.
	// Only the hashes leave localproxy.
	BasicAuth *AuthHash
	// AllowFrom, if set, is the networks public clients must come from
	// (http and tcp): coordinator refuses the others before anything
	// reaches the tunnel.
	AllowFrom []netip.Prefix
}

// Registration is the outcome of publishing an ExposedService.
type Registration struct {
	Service ExposedService
	Port    uint16 // public port, when it has one
	URL     string // public URL or address
	Err     error  // why coordinator refused it, or nil
}

// registerServices publishes every exposed service on conn and records the
// outcome. It runs after each (re)connection. Services refused because
// their name or port is taken (by another client, or kept for one that is
// offline) are asked for again, with backoff, until they are published or
// conn ends: a name that frees up is taken without a restart.
func (c *Client) registerServices(ctx context.Context, conn Conn) {
	regs := make([]Registration, len(c.cfg.Services))
	for i, svc := range c.cfg.Services {
		regs[i] = c.register(ctx, conn, svc)
		c.logRegistration(regs[i], true)
	}
	c.setRegistrations(conn, regs)
	wait := c.cfg.RegisterRetry
	for {
		retry := slices.ContainsFunc(regs, func(r Registration) bool { return nameTaken(r.Err) })
		if !retry {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-conn.Context().Done():
			return
		case <-time.After(wait):
		}
		for i := range regs {
			if nameTaken(regs[i].Err) {
				regs[i] = c.register(ctx, conn, regs[i].Service)
				c.logRegistration(regs[i], false)
			}
		}
		c.setRegistrations(conn, regs)
		wait = min(2*wait, 12*c.cfg.RegisterRetry)
	}
}

// nameTaken reports whether err is coordinator refusing a registration
// for now: the name or port is taken, or it cannot decide (try later).
func nameTaken(err error) bool {
	var se *SessionError
	return errors.As(err, &se) && (se.Code == CodeNameTaken || se.Code == CodeTryLater)
}

// logRegistration logs reg's outcome; a refusal is logged as an error the
// first time only.
func (c *Client) logRegistration(reg Registration, first bool) {
	svc := reg.Service
	switch {
	case reg.Err == nil:
		c.log.Info("service published", withOptions([]any{"service", svc.Name, "kind", svc.Kind, "local", svc.Local,
			"url", reg.URL, "port", reg.Port}, svc.HostHeader, svc.BasicAuth, svc.AllowFrom)...)
	case first:
		attrs := []any{"service", svc.Name, "kind", svc.Kind, "err", reg.Err}
		if nameTaken(reg.Err) {
			attrs = append(attrs, "retrying", true)
		}
		c.log.Error("coordinator refused to publish a service", attrs...)
	default:
		c.log.Debug("service still refused", "service", svc.Name, "err", reg.Err)
	}
}

// setRegistrations records regs as the outcome on conn, if it is still
// the control connection.
func (c *Client) setRegistrations(conn Conn, regs []Registration) {
	c.mu.Lock()
	if c.conn == conn {
		c.registrations = slices.Clone(regs)
	}
	c.mu.Unlock()
}

func (c *Client) register(ctx context.Context, conn Conn, svc ExposedService) Registration {
	reg := Registration{Service: svc}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.OpenTimeout)
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		reg.Err = fmt.Errorf("register %s: %w", svc.Name, err)
		return reg
	}
	defer str.CancelRead(quic.StreamErrorCode(CodeCanceled))
	defer str.Close()
	str.SetReadDeadline(time.Now().Add(c.cfg.OpenTimeout))
	if err := WriteFrame(str, &Register{Kind: svc.Kind, Name: svc.Name, Port: svc.Port, HostHeader: svc.HostHeader, BasicAuth: svc.BasicAuth, AllowFrom: svc.AllowFrom}); err != nil {
		reg.Err = fmt.Errorf("register %s: %w", svc.Name, err)
		return reg
	}
	msg, err := ReadFrame(str)
	if err != nil {
		if (svc.HostHeader != "" || svc.BasicAuth != nil || len(svc.AllowFrom) > 0) && isRemoteCode(err, CodeProtocol) {
			err = fmt.Errorf("%w (coordinator refused the Host header, basic auth or allow-from: is it older than localproxy? update it, or expose %s without them)", err, svc.Name)
		}
		reg.Err = fmt.Errorf("register %s: %w", svc.Name, err)
		return reg
	}
	res, ok := msg.(*RegisterResult)
	if !ok {
		reg.Err = fmt.Errorf("register %s: %w: got %T", svc.Name, ErrProtocol, msg)
		return reg
	}
	if res.Code != CodeOK {
		reg.Err = &SessionError{Target: svc.Name, Code: res.Code, Reason: res.Reason}
		return reg
	}
	reg.Port, reg.URL = res.Port, res.URL
	return reg
}

// Registrations returns the outcome of publishing each exposed service on
// the current control connection.
func (c *Client) Registrations() []Registration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.registrations)
}

// serveReverse accepts the streams coordinator opens on the control
// connection, one per public connection, until conn ends.
func (c *Client) serveReverse(ctx context.Context, conn Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		wg.Go(func() { c.handleReverse(ctx, conn, str) })
	}
}

// serveRequestLog logs the records of public requests coordinator sends
// on the unidirectional streams it opens (flow step 8), until conn ends.
func (c *Client) serveRequestLog(ctx context.Context, conn Conn) {
	for {
		str, err := conn.AcceptUniStream(ctx)
		if err != nil {
			return
		}
		r := bufio.NewReaderSize(str, requestLogBatch)
		for {
			msg, err := ReadFrame(r)
			if err != nil {
				if !errors.Is(err, io.EOF) && ctx.Err() == nil && conn.Context().Err() == nil {
					c.log.Debug("request log from coordinator ended", "err", err)
				}
				str.CancelRead(quic.StreamErrorCode(CodeProtocol))
				break
			}
			m, ok := msg.(*RequestLog)
			if !ok {
				c.log.Debug("unexpected message on coordinator's request log", "type", fmt.Sprintf("%T", msg))
				str.CancelRead(quic.StreamErrorCode(CodeProtocol))
				break
			}
			c.logRequest(m)
		}
	}
}

// logRequest writes the access line of one public request to an exposed
// app, as coordinator reported it.
func (c *Client) logRequest(m *RequestLog) {
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs, slog.String("service", m.Service), slog.String("remote", m.Remote.String()),
		slog.String("method", m.Method), slog.String("target", m.Target), slog.Int("status", int(m.Status)),
		slog.Uint64("bytes_up", m.Up), slog.Uint64("bytes_down", m.Down), slog.Duration("duration", m.Duration),
		slog.String("session", m.Session.String()))
	if m.TLS {
		attrs = append(attrs, slog.Bool("tls", true))
	}
	attrs = append(attrs, slog.String("outcome", m.Outcome))
	c.cfg.AccessLog.LogAttrs(context.Background(), slog.LevelInfo, "public request", attrs...)
	if c.cfg.OnRequestLog != nil {
		c.cfg.OnRequestLog(m)
	}
}

// handleReverse connects one public connection to its local app.
func (c *Client) handleReverse(ctx context.Context, conn Conn, str Stream) {
	start := time.Now()
	c.stats.reverseActive.Add(1)
	defer c.stats.reverseActive.Add(-1)
	// The set-up runs on a goroutine of its own (see onFreshStack); this
	// one lives on, mostly idle, as the relay.
	var ro *ReverseOpen
	app := onFreshStack(func() net.Conn {
		var app net.Conn
		ro, app = c.setUpReverse(ctx, str, start)
		return app
	})
	if app == nil {
		return // refused or failed, answered (and logged once identified)
	}
	st, err := relay.Splice(ctx, newStreamConn(str, conn, ro.Session), app)
	c.logReverse(start, ro, Outcome(err), err, st)
}

// setUpReverse reads ReverseOpen and dials the local app. It returns the
// app's connection, or nil when the session was refused or failed.
func (c *Client) setUpReverse(ctx context.Context, str Stream, start time.Time) (*ReverseOpen, net.Conn) {
	str.SetReadDeadline(start.Add(sessionHeaderTimeout))
	msg, err := ReadFrame(str)
	str.SetReadDeadline(time.Time{})
	ro, ok := msg.(*ReverseOpen)
	if err != nil || !ok {
		str.CancelRead(quic.StreamErrorCode(CodeProtocol))
		str.CancelWrite(quic.StreamErrorCode(CodeProtocol))
		return nil, nil
	}
	if err := WriteFrame(str, &ReverseAck{}); err != nil {
		str.CancelRead(quic.StreamErrorCode(CodeCanceled))
		return ro, nil
	}
	i := slices.IndexFunc(c.cfg.Services, func(s ExposedService) bool { return s.Name == ro.Service })
	if i < 0 {
		WriteFrame(str, &OpenResult{Code: CodeUnknownService, Reason: fmt.Sprintf("this client does not expose %q", ro.Service)})
		str.Close()
		c.logReverse(start, ro, "unknown_service", nil, relay.Stats{})
		return ro, nil
	}
	local := c.cfg.Services[i].Local
	dctx, cancel := context.WithTimeout(ctx, localDialTimeout)
	app, err := (&net.Dialer{}).DialContext(dctx, "tcp", local)
	cancel()
	if err != nil {
		WriteFrame(str, &OpenResult{Code: CodeTargetUnreachable, Reason: fmt.Sprintf("local app %s: %v", local, errors.Unwrap(err))})
		str.Close()
		c.logReverse(start, ro, "local_app_unreachable", err, relay.Stats{})
		return ro, nil
	}
	if err := WriteFrame(str, &OpenResult{Code: CodeOK}); err != nil {
		app.Close()
		str.CancelRead(quic.StreamErrorCode(CodeCanceled))
		return ro, nil
	}
	if c.cfg.WrapApp != nil {
		app = c.cfg.WrapApp(c.cfg.Services[i], *ro, app)
	}
	return ro, app
}

// logReverse writes a reverse session's access-log line.
func (c *Client) logReverse(start time.Time, ro *ReverseOpen, outcome string, err error, st relay.Stats) {
	attrs := []any{"session", ro.Session, "service", ro.Service, "remote", ro.Remote,
		"bytes_in", st.AToB, "bytes_out", st.BToA, "duration", time.Since(start).Round(time.Microsecond), "outcome", outcome}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	c.cfg.AccessLog.Info("reverse session", attrs...)
}

// Errors of the reverse direction.
var (
	ErrNameTaken     = errors.New("quictun: service name or port already in use")
	ErrNotAllowed    = errors.New("quictun: not allowed for this token")
	ErrClientOffline = errors.New("quictun: client offline")
	// ErrTryLater refuses a registration for now (a cluster node cut off
	// from its registry): the client asks again, as for a taken name.
	ErrTryLater = errors.New("quictun: try again later")
)

// Service is a service a connected client exposes, as coordinator sees it.
type Service struct {
	Kind ServiceKind
	Name string
	Port uint16 // public port the client asked for; 0 for none/any
	// HostHeader, if set, replaces the Host header of the requests sent
	// to the app (see ExposedService.HostHeader).
	HostHeader string
	// BasicAuth, if set, is the credentials public requests must carry
	// (see ExposedService.BasicAuth).
	BasicAuth *AuthHash
	// AllowFrom, if set, is the networks public clients must come from
	// (see ExposedService.AllowFrom and Allows).
	AllowFrom []netip.Prefix
	Client    string // the client's name
	// Owner identifies who registered it (token and client name): the
	// same owner re-registering after a reconnect may take the name over
	// from its own stale registration.
	Owner string
	peer  *peer
}

// SameClient reports whether s and o were registered on the same control
// connection.
func (s *Service) SameClient(o *Service) bool { return s.peer != nil && s.peer == o.peer }

// Disconnect closes the control connection of svc's client with code and
// reason: the registry can no longer keep what it published (a cluster
// node that lost a name while cut off from the cluster registry). The
// client's services are withdrawn as on any disconnect.
func (s *Service) Disconnect(code ErrorCode, reason string) {
	if s.peer != nil {
		s.peer.conn.CloseWithError(quic.ApplicationErrorCode(code), reason)
	}
}

// withOptions adds a service's options that are set to log attributes
// (never the credentials, only that there are some).
func withOptions(attrs []any, hostHeader string, auth *AuthHash, allowFrom []netip.Prefix) []any {
	if hostHeader != "" {
		attrs = append(attrs, "host_header", hostHeader)
	}
	if auth != nil {
		attrs = append(attrs, "basic_auth", true)
	}
	if len(allowFrom) > 0 {
		attrs = append(attrs, "allow_from", allowFrom)
	}
	return attrs
}

// Allows reports whether a public client at addr may reach the service.
func (s *Service) Allows(addr netip.Addr) bool {
	if len(s.AllowFrom) == 0 {
		return true
	}
	addr = addr.Unmap()
	for _, p := range s.AllowFrom {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Publication is how a ServiceRegistry made a service reachable.
type Publication struct {
	Port uint16
	URL  string
}

// ServiceRegistry publishes the services clients expose: coordinator's
// public listeners implement it.
type ServiceRegistry interface {
	// Publish makes svc reachable and says how. An error wrapping
	// ErrNameTaken or ErrNotAllowed refuses it with that reason.
	Publish(svc *Service) (Publication, error)
	// Withdraw is called once for each published svc when its client
	// disconnects.
	Withdraw(svc *Service)
}

// Dial opens a reverse session to svc's local app for the public peer
// remote. Errors: ErrClientOffline, or a *SessionError saying why the
// client could not reach its app.
func (svc *Service) Dial(ctx context.Context, remote netip.AddrPort) (*StreamConn, error) {
	type result struct {
		sc  *StreamConn
		err error
	}
	// The caller's goroutine usually lives on as the session's relay: keep
	// its stack small (see onFreshStack).
	r := onFreshStack(func() result {
		sc, err := svc.dial(ctx, remote)
		return result{sc, err}
	})
	return r.sc, r.err
}

// dial is Dial, on the caller's goroutine.
func (svc *Service) dial(ctx context.Context, remote netip.AddrPort) (*StreamConn, error) {
	str, id, err := svc.open(ctx, remote)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { str.CancelWrite(quic.StreamErrorCode(CodeCanceled)) })
	defer stop()
	if err := svc.answer(ctx, str); err != nil {
		return nil, err
	}
	return svc.streamConn(str, id), nil
}

// streamConn wraps a reverse session's stream, with the client's request
// log.
func (svc *Service) streamConn(str Stream, id SessionID) *StreamConn {
	sc := newStreamConn(str, svc.peer.conn, id)
	sc.service, sc.requests = svc.Name, svc.peer.requests
	return sc
}

// DialEarly is Dial without the wait for the client's answer: it returns
// once ReverseOpen is sent, so that the caller's first bytes (a request)
// follow it at once and reach the app as soon as the client has connected
// to it, a round trip sooner. The answer is read by the first Read or
// Peek, which fail with Dial's errors, as does a Write the client refused.
func (svc *Service) DialEarly(ctx context.Context, remote netip.AddrPort) (*StreamConn, error) {
	str, id, err := svc.open(ctx, remote)
	if err != nil {
		return nil, err
	}
	sc := svc.streamConn(str, id)
	sc.awaitAnswer = func() error { return svc.answer(ctx, str) }
	return sc, nil
}

// open opens a stream to svc's client and sends ReverseOpen on it.
func (svc *Service) open(ctx context.Context, remote netip.AddrPort) (Stream, SessionID, error) {
	p := svc.peer
	id := NewSessionID()
	str, err := p.conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, id, fmt.Errorf("%w: %s: %w", ErrClientOffline, svc.Client, err)
	}
	if err := WriteFrame(str, &ReverseOpen{Session: id, Service: svc.Name, Remote: remote}); err != nil {
		str.CancelRead(quic.StreamErrorCode(CodeCanceled))
		str.CancelWrite(quic.StreamErrorCode(CodeCanceled))
		return nil, id, fmt.Errorf("%w: %s: %w", ErrClientOffline, svc.Client, err)
	}
	return str, id, nil
}

// answer reads the client's ReverseAck and OpenResult on str; on any
// failure it resets str and says why.
func (svc *Service) answer(ctx context.Context, str Stream) error {
	fail := func(err error) error {
		str.CancelRead(quic.StreamErrorCode(CodeCanceled))
		str.CancelWrite(quic.StreamErrorCode(CodeCanceled))
		return err
	}
	if err := svc.peer.awaitReverseAck(ctx, str, svc); err != nil {
		return fail(err)
	}
	str.SetReadDeadline(time.Now().Add(localDialTimeout + 2*time.Second))
	msg, err := ReadFrame(str)
	if err != nil {
		if ctx.Err() != nil {
			return fail(context.Cause(ctx))
		}
		return fail(&SessionError{Target: svc.Name, Code: CodeTimeout, Reason: "client did not reach its local app in time"})
	}
	res, ok := msg.(*OpenResult)
	if !ok {
		return fail(fmt.Errorf("%w: expected open result, got %T", ErrProtocol, msg))
	}
	if res.Code != CodeOK {
		return fail(&SessionError{Target: svc.Name, Code: res.Code, Reason: res.Reason})
	}
	str.SetReadDeadline(time.Time{})
	return nil
}

// awaitReverseAck waits for the client's ReverseAck on str. A client that
// sends nothing at all within reverseAckTimeout (plus a few RTTs) — not
// even the QUIC acknowledgements its stack owes for ReverseOpen — is gone:
// its connection is closed so its names are withdrawn now, not at the idle
// timeout. A client that is alive but slow (loaded) only fails this
// session, after reverseSlowAckLimit.
func (p *peer) awaitReverseAck(ctx context.Context, str Stream, svc *Service) error {
	ackWait := reverseAckTimeout + 4*p.conn.RTT()
	heard := p.conn.Received()
	giveUp := time.Now().Add(reverseSlowAckLimit)
	var ack [3]byte // ReverseAck: type, zero length
	for got := 0; got < len(ack); {
		str.SetReadDeadline(time.Now().Add(ackWait))
		n, err := str.Read(ack[got:])
		got += n
		if err == nil || got == len(ack) {
			continue
		}
		switch {
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("%w: %s: %w", ErrClientOffline, svc.Client, err)
		}
		now := p.conn.Received()
		if now == heard {
			p.conn.CloseWithError(quic.ApplicationErrorCode(CodeTimeout), "client did not answer a reverse session")
			return fmt.Errorf("%w: %s sent nothing within %s", ErrClientOffline, svc.Client, ackWait.Round(time.Millisecond))
		}
		if time.Now().After(giveUp) {
			return &SessionError{Target: svc.Name, Code: CodeTimeout,
				Reason: fmt.Sprintf("client %s is connected but did not take the session within %s", svc.Client, reverseSlowAckLimit)}
		}
		heard = now // alive, just slow: wait again
	}
	str.SetReadDeadline(time.Time{})
	if ack[0] != msgReverseAck || ack[1] != 0 || ack[2] != 0 {
		return fmt.Errorf("%w: expected reverse ack, got % x", ErrProtocol, ack)
	}
	return nil
}

// serveRegister handles one Register from p.
func (p *peer) serveRegister(str Stream, reg *Register) {
	defer str.Close()
	answer := func(code ErrorCode, reason string, pub Publication) {
		WriteFrame(str, &RegisterResult{Code: code, Reason: reason, Port: pub.Port, URL: pub.URL})
	}
	registry := p.s.cfg.Services
	switch {
	case registry == nil:
		answer(CodeTargetForbidden, "this coordinator does not publish services", Publication{})
		return
	case reg.Kind != ServiceHTTP && reg.Kind != ServiceTCP:
		answer(CodeProtocol, fmt.Sprintf("unknown service kind %d", reg.Kind), Publication{})
		return
	case reg.HostHeader != "" && (reg.Kind != ServiceHTTP || !ValidHostHeader(reg.HostHeader)):
		answer(CodeProtocol, fmt.Sprintf("Host header %q: want HOST or HOST:PORT, for an http service", reg.HostHeader), Publication{})
		return
	case reg.BasicAuth != nil && reg.Kind != ServiceHTTP:
		answer(CodeProtocol, "basic auth applies to http services only", Publication{})
		return
	case !p.currentGrant().allowsName(reg.Name):
		answer(CodeTargetForbidden, fmt.Sprintf("this token may not expose %q", reg.Name), Publication{})
		return
	}
	svc := &Service{Kind: reg.Kind, Name: reg.Name, Port: reg.Port, HostHeader: reg.HostHeader, BasicAuth: reg.BasicAuth, AllowFrom: reg.AllowFrom, Client: p.name, Owner: p.owner, peer: p}
	pub, err := registry.Publish(svc)
	switch {
	case errors.Is(err, ErrNameTaken):
		answer(CodeNameTaken, err.Error(), pub)
		return
	case errors.Is(err, ErrNotAllowed):
		answer(CodeTargetForbidden, err.Error(), pub)
		return
	case errors.Is(err, ErrTryLater):
		answer(CodeTryLater, err.Error(), pub)
		return
	case err != nil:
		answer(CodeInternal, err.Error(), pub)
		return
	}
	p.mu.Lock()
	p.services = append(p.services, svc)
	p.mu.Unlock()
	p.log.Info("service published", withOptions([]any{"service", reg.Name, "kind", reg.Kind, "url", pub.URL, "port", pub.Port},
		reg.HostHeader, reg.BasicAuth, reg.AllowFrom)...)
	answer(CodeOK, "", pub)
}

// withdrawServices unpublishes everything p exposed.
func (p *peer) withdrawServices() {
	p.mu.Lock()
	svcs := p.services
	p.services = nil
	p.mu.Unlock()
	for _, svc := range svcs {
		p.s.cfg.Services.Withdraw(svc)
		p.log.Info("service withdrawn", "service", svc.Name)
	}
}
