// Package localproxy assembles the localproxy service: one UDP socket
// shared by STUN (natt) and QUIC (quictun), and the browser-facing HTTP
// proxy (httpproxy) whose sessions go through the tunnel. cmd/localproxy
// maps flags onto Config; tests run the same assembly in process.
package localproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/httpproxy"
	"quictunnel/internal/inspector"
	"quictunnel/internal/metrics"
	"quictunnel/internal/service"
	"quictunnel/internal/udpgro"
	"quictunnel/quictun"
)

// Config configures a localproxy. Zero values select the defaults given.
type Config struct {
	// Listen is the TCP address of the browser-facing proxy.
	// Default "127.0.0.1:8118".
	Listen string
	// UDPListen is the local address of the tunnel socket. Default ":0"
	// (any port, IPv4 and IPv6).
	UDPListen string
	// Coordinator is coordinator's QUIC address, "host:port", or several
	// coordinators' as a comma-separated list: localproxy connects to the
	// nearest and fails over to another when it dies (see
	// ParseCoordinators). Required.
	Coordinator string
	// Transport is quictun.TransportAuto, TransportQUIC or TransportTCP
	// (see quictun.ClientConfig.Via). Default quic.
	Transport string
	// CoordinatorTCP is coordinator's TCP transport, or one per
	// coordinator in Coordinator's order. Default: Coordinator.
	CoordinatorTCP string
	// UpstreamProxy, if set, is the HTTP proxy the TCP transport reaches
	// CoordinatorTCP through, with CONNECT: http://[USER:PASSWORD@]HOST:PORT.
	UpstreamProxy string
	// UpstreamFromEnv: without UpstreamProxy, take $HTTPS_PROXY, minding
	// $NO_PROXY.
	UpstreamFromEnv bool
	// Reporter is the STUN server, "host:port". Default: the first
	// coordinator's host, port 3478.
	Reporter string
	// Token authenticates us to coordinator. Required unless
	// ClientCertificate is set.
	Token string
	// ClientCertificate, if set, is presented to coordinator (mutual TLS).
	ClientCertificate *tls.Certificate
	// RootCAs verifies coordinator. Default: the system's roots.
	RootCAs *x509.CertPool
	// ServerName is the name coordinator's certificate must carry.
	// Default: the host of each coordinator's address.
	ServerName string
	// Insecure accepts any coordinator certificate.
	Insecure bool
	// ProxyAuth, if set, is required of browsers in Proxy-Authorization
	// (Basic). It is required when Listen is not a loopback address,
	// unless InsecureNoProxyAuth is set. Default: none.
	ProxyAuth *httpproxy.Credentials
	// InsecureNoProxyAuth lets a proxy listening beyond loopback run
	// without ProxyAuth: anyone who reaches it can use the tunnel.
	InsecureNoProxyAuth bool
	// Name identifies us in coordinator's logs. Default: the host name.
	Name string
	// DialBackTimeout bounds the wait for a dial-back. Default 10s.
	DialBackTimeout time.Duration
	// FastOpen opens sessions without waiting for coordinator (see
	// quictun.ClientConfig.FastOpen): CONNECT is answered at once.
	FastOpen bool
	// QlogDir, if set, is an existing directory for a qlog trace of each
	// QUIC connection (debugging).
	QlogDir string
	// ConnectTimeout bounds connecting to coordinator. Default 5s.
	ConnectTimeout time.Duration
	// KeepAlive is how often idle tunnel connections send a packet to keep
	// NAT mappings open. Default 10s.
	KeepAlive time.Duration
	// STUNTimeout bounds the reporter query at start. Default 3s.
	STUNTimeout time.Duration
	// IdleRestart is the idle timer of the startup workflow: this long
	// after a browser session last opened or closed (or start, or the
	// last run), localproxy re-runs the workflow: asks the reporter for
	// its public address, makes sure the tunnel creation service serves,
	// and tells coordinator the address (changed after a NAT reboot or a
	// new uplink, so later dial-backs reach it). Sessions still open are
	// left alone. Default 1m; negative turns it off.
	IdleRestart time.Duration
	// BusyRecheck is how often localproxy asks the reporter again while
	// browser sessions are open, so that a NAT that maps the tunnel socket
	// anew mid-session (it lost its state: a reboot, a full table) is
	// noticed in seconds. Default 5s; off when IdleRestart is.
	BusyRecheck time.Duration
	// MaxPendingSessions bounds sessions waiting for their dial-back;
	// requests beyond it get 503. Default 10000.
	MaxPendingSessions int
	// Services are local apps to expose through coordinator (reverse
	// direction). See ParseExpose.
	Services []quictun.ExposedService
	// RegisterRetry is the first wait before a service refused because its
	// name or port is taken is asked for again (see
	// quictun.ClientConfig.RegisterRetry). Default 5s.
	RegisterRetry time.Duration
	// LogPublicRequests logs every public request to the exposed apps
	// (see quictun.ClientConfig.RequestLog).
	LogPublicRequests bool
	// BodyReadTimeout bounds the wait for each next part of a browser
	// request's body: a browser that stops sending is answered 408 and
	// the request is ended on every hop. Default 30s.
	BodyReadTimeout time.Duration
	// NoUI turns the inspector page off.
	NoUI bool
	// UIListen, if set, is the TCP address of the inspector page's own
	// listener. Default: the page is served on Listen, at /ui/. Beyond
	// loopback it requires ProxyAuth (the page asks for the same
	// credentials).
	UIListen string
	// UIHistory is how many requests the inspector keeps. Default 500.
	UIHistory int
	// ShutdownTimeout is how long Run lets browser requests and tunnels in
	// progress finish once its context ends. Default 0: close them at once.
	ShutdownTimeout time.Duration
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
	// AccessLog receives one line per request or tunnel. Default: Logger.
	AccessLog *slog.Logger
}

// ConfigError reports an invalid Config field.
type ConfigError struct{ Field, Reason string }

func (e *ConfigError) Error() string { return fmt.Sprintf("localproxy: %s: %s", e.Field, e.Reason) }

// setDefaults fills the defaults in and returns the coordinators.
func (c *Config) setDefaults() ([]quictun.Node, error) {
	nodes, err := ParseCoordinators(c.Coordinator, c.CoordinatorTCP)
	if err != nil {
		return nil, err
	}
	if c.Token == "" && c.ClientCertificate == nil {
		return nil, &ConfigError{"Token", "required unless a client certificate is given"}
	}
	host, _, _ := net.SplitHostPort(nodes[0].Addr)
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8118"
	}
	if c.Transport == "" {
		c.Transport = quictun.TransportQUIC
	}
	if err := CheckTransport(c.Transport, ""); err != nil {
		return nil, err
	}
	if c.UDPListen == "" {
		c.UDPListen = ":0"
	}
	if c.Reporter == "" {
		c.Reporter = net.JoinHostPort(host, "3478")
	}
	if _, _, err := net.SplitHostPort(c.Reporter); err != nil {
		return nil, &ConfigError{"Reporter", fmt.Sprintf("want host:port, got %q", c.Reporter)}
	}
	if c.Name == "" {
		c.Name, _ = os.Hostname()
	}
	if c.STUNTimeout == 0 {
		c.STUNTimeout = 3 * time.Second
	}
	if c.IdleRestart == 0 {
		c.IdleRestart = time.Minute
	}
	if c.BusyRecheck <= 0 {
		c.BusyRecheck = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.AccessLog == nil {
		c.AccessLog = c.Logger
	}
	return nodes, nil
}

// Proxy is a running localproxy.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	ln     net.Listener
	udp    *net.UDPConn
	tr     *quic.Transport
	socket *tunnelSocket
	client *quictun.Client
	proxy  *httpproxy.Proxy

	sessions sessionTracker
	ins      *inspector.Inspector // nil when the page is off
	uiLn     net.Listener
	mux      *uiMux // when the page shares the proxy's listener

	mu  sync.Mutex
	nat natReport
}

// natReport is the NAT behaviour localproxy measured.
type natReport struct {
	Mapping   string `json:"mapping"`
	Filtering string `json:"filtering"`
}

// NAT returns the NAT behaviour measured at start: the mapping and the
// filtering, in words ("" until measured).
func (p *Proxy) NAT() (mapping, filtering string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nat.Mapping, p.nat.Filtering
}

// New binds the proxy's TCP listener and the tunnel's UDP socket. Run
// starts the service; until then nothing is served.
func New(cfg Config) (*Proxy, error) {
	nodes, err := cfg.setDefaults()
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger}
	tcp := nodes[0].TCP
	if tcp == "" {
		tcp = nodes[0].Addr
	}
	upstream, err := upstreamProxy(cfg.UpstreamProxy, cfg.UpstreamFromEnv, tcp)
	if err != nil {
		return nil, err
	}
	var dialTCP func(ctx context.Context, addr string) (net.Conn, error)
	if upstream != nil {
		dialTCP = connectDialer(upstream)
		if cfg.Transport != quictun.TransportQUIC {
			p.log.Info("the TCP transport goes through an upstream proxy", "upstream_proxy", upstream.Redacted())
		}
	}
	p.sessions.changed = make(chan struct{}, 1)
	udp, err := service.ListenUDP(cfg.UDPListen)
	if err != nil {
		return nil, err
	}
	if advice, err := service.SetUDPBuffers(udp); err != nil {
		p.log.Warn("could not size the UDP socket buffers", "err", err)
	} else if advice != "" {
		p.log.Warn(advice)
	}
	p.udp = udp
	p.tr = &quic.Transport{Conn: udpgro.Wrap(udp)}
	if p.socket, err = newTunnelSocket(p.tr, p.log); err != nil {
		p.tr.Close()
		p.udp.Close()
		return nil, err
	}
	p.client, err = quictun.NewClient(quictun.ClientConfig{
		Transport:          p.tr,
		Coordinators:       nodes,
		Via:                cfg.Transport,
		DialTCP:            dialTCP,
		Token:              cfg.Token,
		Certificate:        cfg.ClientCertificate,
		Name:               cfg.Name,
		RootCAs:            cfg.RootCAs,
		ServerName:         cfg.ServerName,
		InsecureSkipVerify: cfg.Insecure,
		DialBackTimeout:    cfg.DialBackTimeout,
		FastOpen:           cfg.FastOpen,
		QlogDir:            cfg.QlogDir,
		ConnectTimeout:     cfg.ConnectTimeout,
		KeepAlive:          cfg.KeepAlive,
		MaxPendingSessions: cfg.MaxPendingSessions,
		Services:           cfg.Services,
		RegisterRetry:      cfg.RegisterRetry,
		RequestLog:         cfg.LogPublicRequests,
		OnRequestLog:       p.publicRequest,
		WrapApp:            p.captureApp,
		Logger:             p.log,
		AccessLog:          cfg.AccessLog,
	})
	if err != nil {
		p.tr.Close()
		p.udp.Close()
		return nil, err
	}
	if p.ln, err = service.ListenTCP(cfg.Listen); err == nil {
		err = p.checkExposure()
		if err == nil {
			err = p.setUpUI()
		}
		if err != nil {
			p.ln.Close()
		}
	}
	if err != nil {
		p.tr.Close()
		p.udp.Close()
		return nil, err
	}
	p.proxy, err = httpproxy.New(httpproxy.Config{Dialer: tunnelDialer{p.client, &p.sessions, isLoopbackListener(p.ln)}, Logger: p.log, AccessLog: cfg.AccessLog,
		PAC: pacFile(p.ln.Addr()), Status: p.statusJSON, ProxyAuth: cfg.ProxyAuth, BodyReadTimeout: cfg.BodyReadTimeout})
	if err != nil {
		p.ln.Close()
		if p.uiLn != nil {
			p.uiLn.Close()
		}
		p.tr.Close()
		p.udp.Close()
		return nil, err
	}
	return p, nil
}

// isLoopbackListener reports whether ln is reachable from this computer
// only.
func isLoopbackListener(ln net.Listener) bool {
	ta, ok := ln.Addr().(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// checkExposure refuses a proxy reachable beyond this computer without
// proxy authentication, unless InsecureNoProxyAuth forces it.
func (p *Proxy) checkExposure() error {
	ta, ok := p.ln.Addr().(*net.TCPAddr)
	if !ok || ta.IP.IsLoopback() || p.cfg.ProxyAuth != nil {
		return nil
	}
	if !p.cfg.InsecureNoProxyAuth {
		return &ConfigError{"Listen", fmt.Sprintf("%s is reachable from other machines: set proxy credentials "+
			"(--proxy-auth USER:PASSWORD or --proxy-auth-file FILE), listen on 127.0.0.1, "+
			"or force an open proxy with --insecure-no-proxy-auth", ta)}
	}
	p.log.Warn("--insecure-no-proxy-auth: the proxy listens beyond loopback WITHOUT authentication; "+
		"anyone who reaches it can use your tunnel and your token", "listen", ta)
	return nil
}

// Addr is the browser-facing proxy's address.
func (p *Proxy) Addr() net.Addr { return p.ln.Addr() }

// TunnelAddr is the local address of the tunnel's UDP socket.
func (p *Proxy) TunnelAddr() net.Addr { return p.udp.LocalAddr() }

// RegisterMetrics adds localproxy's metrics to r.
func (p *Proxy) RegisterMetrics(r *metrics.Registry) {
	r.AddTunnelClient(p.client)
	r.AddHTTP("proxy", p.proxy.Stats)
}

// Client exposes the tunnel client, for status and tests.
func (p *Proxy) Client() *quictun.Client { return p.client }

// Run learns the public address from the reporter, connects to
// coordinator and serves browsers until ctx ends. It logs "localproxy
// ready" once coordinator has accepted the client. It returns nil on a
// clean shutdown and quictun.ErrAuthFailed when coordinator refuses the
// token (logged as an error, never after "ready").
func (p *Proxy) Run(ctx context.Context) error {
	defer p.udp.Close()
	defer p.tr.Close()
	defer p.ln.Close()
	if p.uiLn != nil {
		defer p.uiLn.Close()
	}
	if p.mux != nil {
		defer func() {
			p.mux.close()
			p.mux.wait()
		}()
	}
	defer p.socket.start(ctx)()

	learnt := time.Now()
	var (
		public   netip.AddrPort
		stunErr  error
		stunDone = make(chan struct{})
	)
	stunCtx, cancelSTUN := context.WithTimeout(ctx, p.cfg.STUNTimeout)
	defer cancelSTUN()
	go func() {
		defer close(stunDone)
		public, stunErr = p.socket.publicAddr(stunCtx, p.cfg.Reporter)
		if stunErr != nil {
			p.log.Warn("reporter did not tell us our public address; coordinator will dial back to the address it sees. "+
				"Is UDP to the reporter blocked, or is its port wrong?", "reporter", p.cfg.Reporter, "err", stunErr)
		} else {
			p.log.Info("public address learnt from reporter", "public_addr", public, "reporter", p.cfg.Reporter)
			p.client.SetPublicAddr(public)
		}
	}()
	// The first Hello carries the public address. Where TCP may be used,
	// a reporter that does not answer soon (UDP blocked?) delays
	// connecting by stunWaitTCP at most; a later answer follows in an
	// AddrUpdate.
	wait := p.cfg.STUNTimeout
	if p.cfg.Transport != quictun.TransportQUIC {
		wait = min(wait, stunWaitTCP)
	}
	select {
	case <-stunDone:
	case <-time.After(wait):
	}

	outer := ctx
	ctx, stop := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stop(nil)
	drained := make(chan struct{})
	stopOuter := context.AfterFunc(outer, func() {
		defer close(drained)
		p.drain()
		stop(context.Cause(outer))
	})
	defer func() {
		if !stopOuter() {
			<-drained // ends once proxy.Close has closed what was left
		}
	}()
	clientDone := make(chan error, 1)
	go func() {
		err := p.client.Run(ctx)
		stop(err) // a refused token ends localproxy
		clientDone <- err
	}()
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- p.proxy.Serve(p.ln) }()
	natDone := make(chan struct{})
	go func() {
		defer close(natDone)
		<-stunDone
		if stunErr == nil {
			p.measureNAT(ctx, public)
		}
	}()
	defer func() { <-natDone }()
	idleDone := make(chan struct{})
	go func() {
		defer close(idleDone)
		<-stunDone
		p.relearnPublicAddr(ctx, public, learnt)
	}()
	defer func() { <-idleDone }()
	uiDone := make(chan struct{})
	go func() {
		defer close(uiDone)
		p.serveUI(ctx)
	}()
	defer func() { <-uiDone }()

	// "ready" once coordinator has accepted us: a refused token ends Run
	// (ctx) before it, with the reason logged.
	connected := p.client.Connected()
	var proxyErr error
	for waiting := true; waiting; {
		select {
		case <-connected:
			connected = nil
			st := p.client.Stats()
			p.log.Info("localproxy ready", "proxy", p.ln.Addr(), "tunnel_socket", p.udp.LocalAddr(), "coordinator", st.Coordinator,
				"public_addr", st.PublicAddr, "transport", transportLine(st, p.udp.LocalAddr().String()), "try", fmt.Sprintf("curl -x http://%s http://example.com/", p.ln.Addr()),
				"firefox", fmt.Sprintf("Settings > Network Settings > Manual proxy configuration: HTTP Proxy %s, also use this proxy for HTTPS; or Automatic proxy configuration URL http://%s/proxy.pac", p.ln.Addr(), p.ln.Addr()))
		case <-ctx.Done():
			waiting = false
		case proxyErr = <-proxyDone:
			if proxyErr == nil {
				<-ctx.Done() // draining stopped the listener; the drain ends ctx
			}
			stop(proxyErr)
			waiting = false
		}
	}
	p.proxy.Close()
	if err := <-clientDone; errors.Is(err, quictun.ErrAuthFailed) {
		return err
	}
	if proxyErr != nil && !errors.Is(proxyErr, net.ErrClosed) {
		return fmt.Errorf("proxy stopped: %w", proxyErr)
	}
	return nil
}

// measureNAT measures the NAT's filtering with the reporter, waits for the
// control connection (coordinator's view of our address gives the
// mapping), and logs the NAT's behaviour.
func (p *Proxy) measureNAT(ctx context.Context, public netip.AddrPort) {
	fctx, cancel := context.WithTimeout(ctx, p.cfg.STUNTimeout)
	filtering, ferr := p.socket.filtering(fctx, p.cfg.Reporter)
	cancel()
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !p.client.Stats().Connected {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			p.log.Info("NAT behaviour", "public_addr", public, "mapping", "unknown (coordinator not connected)", "filtering", filtering)
			return
		case <-tick.C:
		}
	}
	st := p.client.Stats()
	attrs := []any{"public_addr", public, "seen_by_coordinator", st.ObservedAddr,
		"mapping", quictun.NATMapping(public, st.ObservedAddr), "filtering", filtering}
	if ferr != nil {
		attrs = append(attrs, "filtering_err", ferr)
	}
	p.mu.Lock()
	p.nat = natReport{Mapping: quictun.NATMapping(public, st.ObservedAddr), Filtering: filtering.String()}
	p.mu.Unlock()
	p.log.Info("NAT behaviour", attrs...)
}

// drain lets browser requests and tunnels in progress finish, for up to
// ShutdownTimeout; the tunnel stays up meanwhile.
func (p *Proxy) drain() {
	if p.cfg.ShutdownTimeout <= 0 {
		return
	}
	p.log.Info("draining: no new browser connections", "connections_active", p.proxy.Stats().ActiveConns, "timeout", p.cfg.ShutdownTimeout)
	ctx, cancel := context.WithTimeoutCause(context.Background(), p.cfg.ShutdownTimeout,
		fmt.Errorf("--shutdown-timeout %s passed", p.cfg.ShutdownTimeout))
	defer cancel()
	if err := p.proxy.Drain(ctx); err != nil {
		p.log.Warn("closing browser connections still open", "err", err)
		return
	}
	p.log.Info("drained: every browser connection finished")
}

// relearnPublicAddr keeps the public address fresh until ctx ends. The
// idle timer fires IdleRestart after a browser session last opened or
// closed (or after start, or after its last run), and re-runs the whole
// startup workflow (rerunStartup), which leaves sessions still open
// alone; each run is logged at info. While sessions are open the STUN
// query alone is also made every BusyRecheck, and after each new
// dial-back connection. public is the address learnt at start, by a
// query sent at learnt.
func (p *Proxy) relearnPublicAddr(ctx context.Context, public netip.AddrPort, learnt time.Time) {
	if p.cfg.IdleRestart < 0 {
		return
	}
	w := &addrWatch{p: p, public: public}
	if public.IsValid() {
		w.confirmed = learnt
	}
	idle := time.NewTimer(p.cfg.IdleRestart)
	defer idle.Stop()
	busy := time.NewTimer(p.cfg.BusyRecheck) // armed while sessions are open
	busy.Stop()
	defer busy.Stop()
	idleSince, busyArmed := time.Now(), false
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.probeReady:
			w.closeSilent()
		case <-p.sessions.changed:
			// A session opened or closed: the idle timer starts again.
			// (Since Go 1.23, Reset and Stop drop a pending tick, so
			// none fires late.)
			idle.Reset(p.cfg.IdleRestart)
			idleSince = time.Now()
			open := p.sessions.count() > 0
			switch {
			case !open:
				busy.Stop()
			case !busyArmed:
				busy.Reset(p.cfg.BusyRecheck)
			}
			busyArmed = open
		case <-p.client.DialBackAccepted():
			// Check now: a mapping change must not catch this connection
			// unconfirmed (it would be left to hang).
			w.check(ctx)
		case <-busy.C:
			busy.Reset(p.cfg.BusyRecheck)
			w.check(ctx)
		case fired := <-idle.C:
			// The next run is IdleRestart after this one started.
			idle.Reset(p.cfg.IdleRestart)
			p.rerunStartup(ctx, w, fired.Sub(idleSince))
			idleSince = fired
		}
	}
}

// rerunStartup re-runs the startup workflow for the idle timer: it asks
// the reporter for the public address, makes sure the tunnel creation
// service serves on the socket (listening again if it stopped), and tells
// coordinator the address, changed or not, so its view is fresh. Sessions
// and connections in progress are left alone (those the NAT mapping
// change cut excepted, see addrWatch.check). It logs one line.
func (p *Proxy) rerunStartup(ctx context.Context, w *addrWatch, idle time.Duration) {
	start := time.Now()
	old := w.public
	addr, err := w.check(ctx)
	attrs := []any{"idle_for", idle.Round(time.Millisecond), "public_addr", w.public, "changed", err == nil && addr != old}
	if err != nil {
		attrs = append(attrs, "reporter_err", err)
	}
	tctx, cancel := context.WithTimeout(ctx, p.cfg.STUNTimeout)
	restarted, terr := p.client.EnsureTunnelService(tctx)
	cancel()
	switch {
	case terr != nil:
		attrs = append(attrs, "tunnel_service", terr)
	case restarted:
		attrs = append(attrs, "tunnel_service", "listening again")
	default:
		attrs = append(attrs, "tunnel_service", "serving")
	}
	switch {
	case err != nil || addr != old:
		// Nothing new to tell, or check told it already.
	case !p.client.Stats().Connected:
		attrs = append(attrs, "coordinator", "not connected; told on reconnect")
	default:
		if err := p.client.SetPublicAddr(addr); err != nil {
			attrs = append(attrs, "coordinator", fmt.Errorf("not told: %w", err))
		} else {
			attrs = append(attrs, "coordinator", "told")
		}
	}
	p.log.Info("startup workflow re-run (idle timer)", append(attrs, "took", time.Since(start).Round(time.Microsecond))...)
}

// addrWatch is the public address as last learnt, and what depends on it.
//
// Behind a NAT that maps every destination alike (or none, when the old
// address has left the interfaces), a new address means the old mapping is
// gone, and with it the dial-back connections that came through it: those
// accepted before the last query that still saw the old address. They are
// closed, so their sessions end at once instead of hanging until the QUIC
// idle timeout. The other dial-back connections (behind a NAT that maps
// each destination apart, or not yet confirmed) are closed if they then
// hear nothing from their peer for a keepalive period. (The control
// connection follows the new mapping by itself.)
type addrWatch struct {
	p         *Proxy
	public    netip.AddrPort
	confirmed time.Time // when the last query that saw public was sent
	shared    bool      // the mapping is the one coordinator sees too
	// probe holds the dial-back connections that may have lost their
	// mapping, to be closed when probeReady fires if still silent.
	probe      *quictun.DialBackProbe
	probeReady <-chan time.Time
}

// check asks the reporter for the public address and, if it changed,
// tells coordinator and deals with the dial-back connections.
func (w *addrWatch) check(ctx context.Context) (netip.AddrPort, error) {
	p := w.p
	sent := time.Now()
	if st := p.client.Stats(); st.Connected && st.ObservedAddr == w.public {
		w.shared = true
	}
	qctx, cancel := context.WithTimeout(ctx, p.cfg.STUNTimeout)
	addr, err := p.socket.publicAddr(qctx, p.cfg.Reporter)
	cancel()
	switch {
	case err != nil:
		p.log.Debug("public address re-check: reporter did not answer", "reporter", p.cfg.Reporter, "err", err)
		return addr, err
	case addr == w.public:
		w.confirmed = sent
		return addr, nil
	}
	p.log.Info("public address changed; telling coordinator", "old", w.public, "new", addr)
	old := w.public
	w.public = addr
	if err := p.client.SetPublicAddr(addr); err != nil {
		p.log.Warn("could not tell coordinator the new public address; it is sent on reconnect", "err", err)
	}
	// An old address still on an interface (an IPv6 temporary address
	// replaced by a newer one) still reaches us: its dial-back
	// connections live on.
	if w.shared && !isLocalAddr(old.Addr()) {
		if n := p.client.CloseDialBacks(w.confirmed, "localproxy's NAT mapping changed"); n > 0 {
			p.log.Info("closed the dial-back connections that came through the old NAT mapping; their sessions end now, new ones are dialed back to the new address",
				"connections", n)
		}
	}
	// The others may have lost their mapping too (behind a NAT that
	// maps each destination apart, a new mapping towards the reporter
	// says nothing certain about theirs): those that hear nothing from
	// their peer for a keepalive period are closed.
	if w.probe = p.client.ProbeDialBacks(sent); w.probe.Len() > 0 {
		w.probeReady = time.After(time.Until(w.probe.Ready))
	} else {
		w.probe, w.probeReady = nil, nil
	}
	w.confirmed = sent
	return addr, nil
}

// closeSilent closes the probed dial-back connections that stayed silent.
func (w *addrWatch) closeSilent() {
	if n := w.probe.CloseSilent("localproxy's NAT mapping changed"); n > 0 {
		w.p.log.Info("closed the dial-back connections that stopped answering when the NAT mapping changed; new sessions are dialed back to the new address",
			"connections", n)
	}
	w.probe, w.probeReady = nil, nil
}

// isLocalAddr reports whether ip is assigned to one of this machine's
// interfaces.
func isLocalAddr(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if x, ok := netip.AddrFromSlice(n.IP); ok && x.Unmap() == ip.Unmap() {
				return true
			}
		}
	}
	return false
}

// pacFile is the proxy auto-config served at /proxy.pac: everything
// through this proxy, except loopback names (localhost, *.localhost) and
// addresses.
func pacFile(addr net.Addr) string {
	return fmt.Sprintf(`function FindProxyForURL(url, host) {
  if (isPlainHostName(host) || host == "localhost" || dnsDomainIs(host, ".localhost") || shExpMatch(host, "127.*") || host == "[::1]") {
    return "DIRECT";
  }
  return "PROXY %s";
}
`, addr)
}

// publicAddrOf converts a net.Addr to a netip.AddrPort with IPv4-mapped
// addresses unmapped.
func publicAddrOf(a net.Addr) netip.AddrPort {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
