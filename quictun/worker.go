package quictun

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/internal/relay"
)

// WorkerConfig configures a dial-back worker: coordinator's dial-back part
// run as a process of its own on another address (coordinator --role
// dialback), so the data path of forward sessions leaves coordinator's
// host. The worker connects to coordinator, takes Jobs, dials the targets
// and dials back to the clients from its own socket.
type WorkerConfig struct {
	// Transport is the worker's UDP socket: it connects to coordinator,
	// dials back and reads punches on it. Required; the caller owns it.
	Transport *quic.Transport
	// Coordinator is coordinator's address, "host:port". Required.
	Coordinator string
	// Token is coordinator's worker token. Required.
	Token string
	// Certificate is coordinator's own certificate and key: clients accept
	// dial-backs only from the certificate they verified on their control
	// connection. Required.
	Certificate tls.Certificate
	// RootCAs, ServerName and InsecureSkipVerify verify coordinator, as
	// for localproxy. Defaults: system roots, Coordinator's host.
	RootCAs            *x509.CertPool
	ServerName         string
	InsecureSkipVerify bool
	// Advertise lists the addresses clients punch towards, one per address
	// family. Default: the source address coordinator observes.
	Advertise []netip.AddrPort
	// DialTarget opens the TCP connection to a session's target. Default:
	// a net.Dialer.
	DialTarget func(ctx context.Context, network, address string) (net.Conn, error)
	// TargetDialTimeout bounds dialing a target. Default 10s.
	TargetDialTimeout time.Duration
	// RelayAfter bounds a dial-back before the session is relayed through
	// coordinator instead. Default 2s.
	RelayAfter time.Duration
	// ConnectTimeout bounds one attempt to connect to coordinator.
	// Default 5s.
	ConnectTimeout time.Duration
	// QlogDir, if set, is an existing directory that receives a qlog trace
	// of each QUIC connection (for debugging; the files grow with traffic).
	QlogDir string
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
	// AccessLog receives one line per session. Default: Logger.
	AccessLog *slog.Logger
}

func (c *WorkerConfig) validate() error {
	switch {
	case c.Transport == nil:
		return &ConfigError{"Transport", "required"}
	case c.Coordinator == "":
		return &ConfigError{"Coordinator", "required"}
	case c.Token == "":
		return &ConfigError{"Token", "required"}
	case len(c.Token) > maxTokenLen:
		return &ConfigError{"Token", "longer than 1024 bytes"}
	case len(c.Certificate.Certificate) == 0:
		return &ConfigError{"Certificate", "required: the coordinator's certificate and key"}
	case len(c.Advertise) > maxAdvertise:
		return &ConfigError{"Advertise", fmt.Sprintf("at most %d addresses", maxAdvertise)}
	}
	for _, a := range c.Advertise {
		if !a.IsValid() || a.Port() == 0 || a.Addr().IsUnspecified() {
			return &ConfigError{"Advertise", fmt.Sprintf("%v is not an address clients can send to", a)}
		}
	}
	if _, _, err := net.SplitHostPort(c.Coordinator); err != nil {
		return &ConfigError{"Coordinator", "want host:port: " + err.Error()}
	}
	return nil
}

func (c *WorkerConfig) setDefaults() {
	setDefault(&c.TargetDialTimeout, 10*time.Second)
	setDefault(&c.RelayAfter, 2*time.Second)
	setDefault(&c.ConnectTimeout, 5*time.Second)
	if c.ServerName == "" {
		c.ServerName, _, _ = net.SplitHostPort(c.Coordinator)
	}
	if c.DialTarget == nil {
		d := &net.Dialer{Timeout: c.TargetDialTimeout}
		c.DialTarget = d.DialContext
	}
	c.Logger = orDiscard(c.Logger)
	if c.AccessLog == nil {
		c.AccessLog = c.Logger
	}
}

// maxWorkerJobs bounds the jobs a worker runs at once.
const maxWorkerJobs = 100000

// Worker is a dial-back worker. Run starts it.
type Worker struct {
	cfg     WorkerConfig
	log     *slog.Logger
	punches *punchBook
	jobs    sync.WaitGroup // every serveJob, whichever connection brought it

	mu        sync.Mutex
	connected bool
	observed  netip.AddrPort // our address as coordinator sees it
	clients   map[[32]byte]*workerClient
	ctrl      Stream // control stream to coordinator; nil while down

	sessions drainGate // jobs being served; stopped by Drain

	stats workerCounters
}

type workerCounters struct {
	jobs, targetErrors, dialBackSessions, relaySessions, dialBackErrors atomic.Int64
	activeSessions, bytesUp, bytesDown, punches                         atomic.Int64
}

// WorkerStats is a snapshot of a Worker's counters. Up is client→target.
type WorkerStats struct {
	Connected        bool
	Clients          int // clients with dial-back state
	Jobs             int64
	TargetErrors     int64
	DialBackSessions int64
	RelaySessions    int64
	DialBackErrors   int64
	ActiveSessions   int64
	BytesUp          int64
	BytesDown        int64
	Punches          int64 // punch packets received
}

// workerClient is what a worker keeps per client (by dial-back
// certificate): one dial-back connection, reused by its sessions.
type workerClient struct {
	mu   sync.Mutex // serialises dial-back set-up
	conn *quic.Conn
	// observed is the client's address as coordinator saw it when conn
	// was dialed (Job.Observed).
	observed   netip.AddrPort
	addr       netip.AddrPort // the address conn was dialed to
	refs       connRefs       // sessions on each dial-back connection
	relayUntil time.Time      // sessions are relayed until then
	relayErr   error
}

func (wc *workerClient) live() bool { return wc.conn != nil && wc.conn.Context().Err() == nil }

// NewWorker validates cfg and prepares a worker.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return &Worker{
		cfg:     cfg,
		log:     cfg.Logger,
		punches: newPunchBook(65536, 10*time.Second),
		clients: make(map[[32]byte]*workerClient),
	}, nil
}

// Stats returns a snapshot of the worker's counters.
func (w *Worker) Stats() WorkerStats {
	w.mu.Lock()
	st := WorkerStats{Connected: w.connected, Clients: len(w.clients)}
	w.mu.Unlock()
	st.Jobs = w.stats.jobs.Load()
	st.TargetErrors = w.stats.targetErrors.Load()
	st.DialBackSessions = w.stats.dialBackSessions.Load()
	st.RelaySessions = w.stats.relaySessions.Load()
	st.DialBackErrors = w.stats.dialBackErrors.Load()
	st.ActiveSessions = w.stats.activeSessions.Load()
	st.BytesUp = w.stats.bytesUp.Load()
	st.BytesDown = w.stats.bytesDown.Load()
	st.Punches = w.stats.punches.Load()
	return st
}

// Run keeps the worker connected to coordinator and serves its jobs until
// ctx ends. It returns ErrAuthFailed when coordinator refuses the token.
func (w *Worker) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer w.jobs.Wait() // after cancel and closeClients have ended them
	defer cancel()
	wg.Go(func() { w.readPunches(ctx) })
	defer w.closeClients()
	backoff := 250 * time.Millisecond
	for {
		up := time.Now()
		err := w.connectAndServe(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrAuthFailed) {
			w.log.Error("coordinator refused the worker token; check --worker-token on both", "coordinator", w.cfg.Coordinator, "err", err)
			return err
		}
		if time.Since(up) > 30*time.Second {
			backoff = 250 * time.Millisecond
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		w.log.Warn("coordinator connection down; retrying", "coordinator", w.cfg.Coordinator, "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// Drain makes the worker take no more jobs and waits for the sessions in
// progress to end: it closes its side of the control stream, which tells
// coordinator to give the worker no more clients, and refuses jobs still
// arriving with CodeShutdown (coordinator then serves them itself). It
// returns nil once no session is left, or ctx's cause when ctx ends
// first. Ending Run's context then closes everything.
func (w *Worker) Drain(ctx context.Context) error {
	w.sessions.stop()
	w.mu.Lock()
	if w.ctrl != nil {
		w.ctrl.Close()
	}
	w.mu.Unlock()
	return w.sessions.wait(ctx)
}

// readPunches records the source of every punch arriving on the socket.
func (w *Worker) readPunches(ctx context.Context) {
	buf := make([]byte, 1500)
	for {
		n, from, err := w.cfg.Transport.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return
		}
		k, ok := parsePunch(buf[:n])
		ua, isUDP := from.(*net.UDPAddr)
		if !ok || !isUDP {
			continue
		}
		w.stats.punches.Add(1)
		ap := ua.AddrPort()
		w.punches.note(k, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
}

// connectAndServe connects to coordinator and serves jobs until the
// connection ends.
func (w *Worker) connectAndServe(ctx context.Context) error {
	conn, err := w.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.CloseWithError(quic.ApplicationErrorCode(CodeShutdown), "worker shutting down")
	w.log.Info("connected to coordinator as dial-back worker", "coordinator", w.cfg.Coordinator,
		"observed_addr", w.observedAddr(), "advertise", w.cfg.Advertise)
	defer func() {
		w.mu.Lock()
		w.connected, w.ctrl = false, nil
		w.mu.Unlock()
	}()
	for {
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			return authError(context.Cause(conn.Context()))
		}
		// Jobs belong to the worker, not to this connection: a session
		// carried over dial-back outlives a lost coordinator connection,
		// and the worker reconnects meanwhile.
		w.jobs.Go(func() { w.serveJob(ctx, conn, str) })
	}
}

func (w *Worker) connect(ctx context.Context) (*quic.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.ConnectTimeout)
	defer cancel()
	addr, err := net.ResolveUDPAddr("udp", w.cfg.Coordinator)
	if err != nil {
		return nil, fmt.Errorf("resolve coordinator %s: %w", w.cfg.Coordinator, err)
	}
	tlsConf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		RootCAs:            w.cfg.RootCAs,
		ServerName:         w.cfg.ServerName,
		InsecureSkipVerify: w.cfg.InsecureSkipVerify,
		NextProtos:         []string{ALPNWorker},
	}
	// Coordinator opens a stream per job.
	qc := QUICConfig(maxWorkerJobs, w.cfg.ConnectTimeout)
	qc.Tracer = qlogTracer(w.cfg.QlogDir, w.log)
	conn, err := w.cfg.Transport.Dial(ctx, addr, tlsConf, qc)
	if err != nil {
		return nil, fmt.Errorf("connect to coordinator %s: %w", addr, err)
	}
	ctrl, welcome, err := greet(ctx, wrapQUIC(conn), &WorkerHello{Version: ProtocolVersion, Token: w.cfg.Token, Advertise: w.cfg.Advertise})
	if err != nil {
		return nil, err
	}
	ctrl.CancelRead(quic.StreamErrorCode(CodeOK))
	w.mu.Lock()
	w.connected, w.observed, w.ctrl = true, welcome.ObservedAddr, ctrl
	if w.sessions.isStopped() {
		ctrl.Close() // we take no jobs: coordinator gives us no clients
	}
	w.mu.Unlock()
	return conn, nil
}

func (w *Worker) observedAddr() netip.AddrPort {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.observed
}

// punchTo is the address a client at addr should punch towards: the
// advertised one of its address family, else the observed one if it is.
func (w *Worker) punchTo(client netip.AddrPort) netip.AddrPort {
	is4 := client.Addr().Unmap().Is4()
	for _, a := range w.cfg.Advertise {
		if a.Addr().Unmap().Is4() == is4 {
			return a
		}
	}
	if o := w.observedAddr(); o.IsValid() && o.Addr().Unmap().Is4() == is4 {
		return o
	}
	return netip.AddrPort{}
}

// client returns the state kept for the client with dial-back certificate
// hash h, forgetting clients with nothing worth keeping when there are many.
func (w *Worker) client(h [32]byte) *workerClient {
	w.mu.Lock()
	defer w.mu.Unlock()
	if wc, ok := w.clients[h]; ok {
		return wc
	}
	if len(w.clients) >= 1024 {
		now := time.Now()
		for k, wc := range w.clients {
			if wc.mu.TryLock() {
				if !wc.live() && now.After(wc.relayUntil) && len(wc.refs.n) == 0 {
					delete(w.clients, k)
				}
				wc.mu.Unlock()
			}
		}
	}
	wc := &workerClient{}
	w.clients[h] = wc
	return wc
}

func (w *Worker) closeClients() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, wc := range w.clients {
		if wc.conn != nil {
			wc.conn.CloseWithError(quic.ApplicationErrorCode(CodeShutdown), "worker shutting down")
		}
	}
}

// serveJob runs one session handed over by coordinator.
func (w *Worker) serveJob(ctx context.Context, coord *quic.Conn, str Stream) {
	str.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := ReadFrame(str)
	job, ok := msg.(*Job)
	if err != nil || !ok {
		str.CancelRead(quic.StreamErrorCode(CodeProtocol))
		str.CancelWrite(quic.StreamErrorCode(CodeProtocol))
		return
	}
	str.SetReadDeadline(time.Time{})
	if !w.sessions.begin() {
		// Draining: coordinator, seeing nothing answered, serves it itself.
		str.CancelRead(quic.StreamErrorCode(CodeShutdown))
		str.CancelWrite(quic.StreamErrorCode(CodeShutdown))
		return
	}
	defer w.sessions.end()
	w.stats.jobs.Add(1)
	start := time.Now()
	log := w.log.With("session", job.Session, "target", job.Target)
	outcome := func(status string, err error, st relay.Stats) {
		attrs := []any{"session", job.Session, "client_addr", job.Reported, "target", job.Target,
			"bytes_up", st.AToB, "bytes_down", st.BToA, "duration", time.Since(start).Round(time.Microsecond), "outcome", status}
		if err != nil {
			attrs = append(attrs, "err", err)
		}
		w.cfg.AccessLog.Info("session", attrs...)
	}
	fail := func(code ErrorCode) {
		str.CancelRead(quic.StreamErrorCode(code))
		str.CancelWrite(quic.StreamErrorCode(code))
	}

	// The set-up's deep calls run on a goroutine of their own (see
	// onFreshStack); this one lives on, mostly idle, as the relay.
	su := onFreshStack(func() sessionSetup { return w.setUpJob(ctx, coord, str, job, log, outcome, fail) })
	if su.sess == nil {
		return // failed, answered and logged
	}
	if su.release != nil {
		defer su.release()
	}
	sess, target, mode := su.sess, su.target, su.mode
	w.stats.activeSessions.Add(1)
	st, err := relay.Splice(ctx, sess, target)
	w.stats.activeSessions.Add(-1)
	w.stats.bytesUp.Add(st.AToB)
	w.stats.bytesDown.Add(st.BToA)
	outcome(Outcome(err)+" ("+mode+")", err, st)
}

// setUpJob dials the target, answers the job and dials back to the
// client (or falls back to the relay through coordinator).
func (w *Worker) setUpJob(ctx context.Context, coord *quic.Conn, str Stream, job *Job, log *slog.Logger,
	outcome func(string, error, relay.Stats), fail func(ErrorCode)) (su sessionSetup) {
	dctx, cancel := context.WithTimeout(ctx, w.cfg.TargetDialTimeout)
	target, err := w.cfg.DialTarget(dctx, "tcp", job.Target)
	cancel()
	if err != nil {
		code, status := CodeTargetUnreachable, "target_unreachable"
		if errors.Is(err, ErrTargetForbidden) {
			code, status = CodeTargetForbidden, "forbidden"
		}
		w.stats.targetErrors.Add(1)
		WriteFrame(str, &JobResult{Code: code, Reason: err.Error()})
		str.Close()
		str.CancelRead(quic.StreamErrorCode(CodeOK))
		outcome(status, err, relay.Stats{})
		return su
	}
	// A client's sessions share its dial-back connection; only dialing a
	// new one is done by one job at a time, with wc.mu held until it is
	// settled, so that the client punches once.
	wc := w.client(job.CertSHA256)
	wc.mu.Lock()
	locked := true
	unlock := func() {
		if locked {
			locked = false
			wc.mu.Unlock()
		}
	}
	defer unlock()
	relaying, relayErr := time.Now().Before(wc.relayUntil), wc.relayErr
	var live *quic.Conn
	if wc.live() {
		live = wc.conn
		if job.Observed == wc.addr {
			// The control connection's move caught up with a dial-back
			// already made to the new address (coordinator validates the
			// new path some time after the client reports it).
			wc.observed = job.Observed
		} else if job.Observed != wc.observed {
			// The client's control connection moved: its NAT mapped it
			// anew, and the dial-back connection, which came in through
			// the old mapping, most likely no longer gets in. Punch and
			// dial anew rather than find it silent (and relay) first.
			log.Info("client's address changed since its dial-back connection was made (its NAT mapped it anew?): dialing back anew",
				"was", wc.observed, "now", job.Observed)
			if wc.refs.retire(live) {
				live.CloseWithError(quic.ApplicationErrorCode(CodeOK), "client address changed")
			}
			wc.conn, live = nil, nil
		}
	}
	res := &JobResult{Code: CodeOK}
	if relaying || live != nil {
		unlock()
	} else {
		clientAddr := job.Reported
		if !clientAddr.IsValid() {
			clientAddr = job.Observed
		}
		res.PunchTo = w.punchTo(clientAddr)
	}
	if err := WriteFrame(str, res); err != nil {
		target.Close()
		fail(CodeCanceled)
		outcome("coordinator_gone", err, relay.Stats{})
		return su
	}
	// Coordinator says go once the client has punched (or at once).
	str.SetReadDeadline(time.Now().Add(w.cfg.RelayAfter + 5*time.Second))
	var b [1]byte
	if _, err := io.ReadFull(str, b[:]); err != nil || b[0] != punchedMarker {
		target.Close()
		fail(CodeCanceled)
		outcome("client_gone", err, relay.Stats{})
		return su
	}
	str.SetReadDeadline(time.Time{})

	var s *StreamConn
	switch {
	case relaying:
		err = fmt.Errorf("relaying since dial-back failed: %w", relayErr)
	case live != nil:
		if s, err = w.reuseDialBack(ctx, wc, live, job.Session); err != nil && !errors.Is(err, errSessionAbandoned) {
			// Only this session pays: the next one punches anew.
			w.stats.dialBackErrors.Add(1)
			log.Info("dial-back connection went silent (NAT mapping lost while idle?); relaying this session, the next one dials back anew", "reason", err)
		}
	default:
		if s, err = w.dialBack(ctx, wc, job, res.PunchTo.IsValid()); err != nil && !errors.Is(err, errSessionAbandoned) {
			wc.relayUntil, wc.relayErr = time.Now().Add(relayRetry), err
			w.stats.dialBackErrors.Add(1)
			log.Warn("dial-back failed: relaying this client's sessions through coordinator", "reason", err, "retry_dial_back_in", relayRetry)
		}
		unlock()
	}
	if errors.Is(err, errSessionAbandoned) {
		target.Close()
		fail(CodeCanceled)
		outcome("client_gone", err, relay.Stats{})
		return su
	}
	if err == nil {
		if _, err := str.Write([]byte{dialBackAck}); err != nil {
			s.Reset()
			target.Close()
			fail(CodeCanceled)
			outcome("coordinator_gone", err, relay.Stats{})
			return su
		}
		str.Close()
		str.CancelRead(quic.StreamErrorCode(CodeOK))
		w.stats.dialBackSessions.Add(1)
		su.sess, su.mode = s, "dial-back"
		wc.mu.Lock()
		wc.refs.add(quicOf(s.conn))
		wc.mu.Unlock()
		su.release = func() { // by serveJob, when the session ends
			wc.mu.Lock()
			retired := wc.refs.done(quicOf(s.conn))
			wc.mu.Unlock()
			if retired {
				s.conn.CloseWithError(quic.ApplicationErrorCode(CodeOK), "client address changed")
			}
		}
	} else {
		if _, err := str.Write([]byte{relayMarker}); err != nil {
			target.Close()
			fail(CodeCanceled)
			outcome("coordinator_gone", err, relay.Stats{})
			return su
		}
		su.sess, su.mode = newStreamConn(str, wrapQUIC(coord), job.Session), "relay"
		w.stats.relaySessions.Add(1)
	}
	su.target = target
	return su
}

// reuseDialBack returns an acknowledged stream for session id on the
// client's live dial-back connection conn. One that does not answer (the
// NAT forgot us while idle) is closed and forgotten, so that the next
// session punches anew.
func (w *Worker) reuseDialBack(ctx context.Context, wc *workerClient, conn *quic.Conn, id SessionID) (*StreamConn, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.RelayAfter)
	defer cancel()
	s, err := openDialBackStream(ctx, conn, id)
	if err == nil {
		if err = awaitAck(s, w.cfg.RelayAfter); err == nil {
			return s, nil
		}
		s.Reset()
		if errors.Is(err, errSessionAbandoned) {
			return nil, err // the connection answered
		}
	}
	conn.CloseWithError(quic.ApplicationErrorCode(CodeTimeout), "dial-back connection silent")
	wc.mu.Lock()
	if wc.conn == conn {
		wc.conn = nil
	}
	wc.mu.Unlock()
	return nil, fmt.Errorf("%w: %w", errDialBackStale, err)
}

// dialBack dials a new dial-back connection for job's client and returns
// an acknowledged stream on it. Called with wc.mu held.
func (w *Worker) dialBack(ctx context.Context, wc *workerClient, job *Job, punched bool) (*StreamConn, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.RelayAfter)
	defer cancel()
	var addrs []netip.AddrPort
	var punchSource netip.AddrPort
	if punched {
		// The punch left before coordinator said go; allow it a moment
		// more, it travels a different path.
		if from, ok := w.punches.wait(punchKeyOf(job.Session), 200*time.Millisecond); ok {
			punchSource = from
			addrs = append(addrs, from)
		}
	}
	for _, a := range []netip.AddrPort{job.Reported, job.Observed} {
		if a.IsValid() && !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	conn, addr, err := dialBackTo(ctx, w.cfg.Transport, w.cfg.Certificate, job.CertSHA256, addrs, qlogTracer(w.cfg.QlogDir, w.log))
	if err != nil {
		return nil, err
	}
	w.log.Info("dial-back connection established", "addr", addr, "punch_source", punchSource, "reported", job.Reported)
	wc.conn, wc.observed, wc.addr = conn, job.Observed, addr
	s, err := openDialBackStream(ctx, conn, job.Session)
	if err == nil {
		if err = awaitAck(s, w.cfg.RelayAfter); err == nil {
			return s, nil
		}
		s.Reset()
		if errors.Is(err, errSessionAbandoned) {
			return nil, err // the connection answered: kept for the next sessions
		}
	}
	conn.CloseWithError(quic.ApplicationErrorCode(CodeTimeout), "dial-back stream not acknowledged")
	wc.conn = nil
	return nil, err
}

// errDialBackStale is a reused dial-back connection that no longer answers.
var errDialBackStale = errors.New("dial-back connection no longer answers")

// checkWorkerToken compares a worker's token with want in constant time.
func checkWorkerToken(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
