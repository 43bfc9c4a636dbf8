// Package coordinator assembles the coordinator service: the QUIC tunnel
// server (quictun) on one UDP socket and, optionally, an embedded STUN
// reporter (natt) on another. cmd/coordinator maps flags onto Config;
// tests run the same assembly in process.
package coordinator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

	"quictunnel/httpproxy"
	"quictunnel/internal/metrics"
	"quictunnel/internal/service"
	"quictunnel/internal/udpgro"
	"quictunnel/natt"
	"quictunnel/quictun"
)

// Config configures a coordinator. Zero values select the defaults given.
type Config struct {
	// Listen is the UDP address for QUIC. Default ":4433".
	Listen string
	// TCPListen, if set, is the TCP address of the TCP transport (TLS
	// over TCP with a stream multiplexer), for clients whose UDP is
	// blocked: same certificate, tokens and policy as QUIC.
	TCPListen string
	// Certificate is the TLS certificate clients verify. Required unless
	// GetCertificate is set.
	Certificate tls.Certificate
	// GetCertificate, if set, gives the certificate of each new QUIC and
	// TCP connection instead of Certificate: automatic certificates,
	// which renew while the connections made stay up.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// ResetSecret, if set, is what the QUIC stateless reset key derives
	// from instead of Certificate's private key (which automatic renewals
	// change); it must be the same after a restart.
	ResetSecret []byte
	// ExtraALPN are ALPN protocols HTTPSListen and TCPListen offer beside
	// their own, for the certificate functions to answer: acme-tls/1, an
	// ACME CA's TLS-ALPN-01 challenge.
	ExtraALPN []string
	// Token is the secret clients present. Required unless Tokens is set.
	Token string
	// Tokens, if set, replaces Token: one entry per client, each possibly
	// limited to certain service names or barred from the forward proxy.
	Tokens []TokenEntry
	// ClientCAs, if set, makes clients authenticate with a certificate
	// signed by one of these CAs instead of a token (mutual TLS). The
	// certificate's name (common name, else first DNS name) picks the
	// Tokens entry with that client name, whose grant applies; without
	// Tokens every such client may do everything.
	ClientCAs *x509.CertPool
	// ReporterListen, if set, runs a STUN reporter on this UDP address.
	ReporterListen string
	// ReporterKeepAlive is the embedded reporter's keepalive interval.
	// Default: natt's default.
	ReporterKeepAlive time.Duration
	// TargetDialTimeout bounds dialing a target. Default 10s.
	TargetDialTimeout time.Duration
	// DialBackTimeout bounds a dial-back. Default 10s.
	DialBackTimeout time.Duration
	// HTTPListen, if set, is the public TCP address where exposed HTTP
	// apps are reached by name: NAME.Domain.
	HTTPListen string
	// HTTPSListen, if set, is the public TCP address where exposed HTTP
	// apps are reached by name over TLS: https://NAME.Domain. The apps see
	// X-Forwarded-Proto: https.
	HTTPSListen string
	// HTTPSCertificate gives the certificate HTTPSListen serves (as
	// tls.Config.GetCertificate); it should cover *.Domain. Default:
	// Certificate.
	HTTPSCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// HTTPSOnDemand says HTTPSCertificate obtains certificates itself (on
	// demand for published names, or a wildcard that may not be there
	// yet): it is not probed at start.
	HTTPSOnDemand bool
	// HTTPToHTTPS makes HTTPListen answer every request with a redirect
	// to the same URL on HTTPSListen (which it needs).
	HTTPToHTTPS bool
	// Domain is the public domain of exposed names. Default "localhost".
	Domain string
	// PortRange is where exposed services may get public ports of their
	// own (raw TCP, or a dedicated HTTP port). Default: none.
	PortRange PortRange
	// PublicBind is the address public ports listen on. Default: all.
	PublicBind string
	// ListNames makes "not found" pages list the exposed names.
	ListNames bool
	// TrustedProxies are the peers (load balancers in front of the public
	// HTTP ports) whose Forwarded, X-Forwarded-* and X-Real-IP fields
	// reach the apps, extended with this hop. From any other peer those
	// fields are dropped and written afresh. Default: none.
	TrustedProxies []netip.Prefix
	// NameGrace is how long a name or port stays reserved for the client
	// identity (token or certificate) that published it once that client
	// is offline: others are refused it, and the public gets 502 "offline".
	// Default DefaultNameGrace; negative: not reserved.
	NameGrace time.Duration
	// StateFile, if set, is a JSON file (replaced atomically) where
	// coordinator keeps which identity holds which name and port, as
	// hashes, so that they stay reserved across a restart. Default: not
	// kept.
	StateFile string
	// Cluster, if its Endpoints are set, makes this coordinator one node
	// of a cluster sharing its names and ports in etcd (see cluster.go);
	// StateFile is then not used. Default: alone, names in memory.
	Cluster ClusterConfig
	// WorkerToken, if set, lets dial-back workers (NewWorker) with this
	// secret connect and carry sessions' dial-backs.
	WorkerToken string
	// Targets decides which targets clients may have dialed. Default:
	// public addresses only (see TargetPolicy).
	Targets TargetPolicy
	// DialTarget, if set, replaces the target dialer and with it the
	// Targets policy: for programs embedding coordinator that decide
	// themselves what may be dialed (the browser tests map their test
	// sites' names to loopback this way). Not settable from the command
	// line.
	DialTarget func(ctx context.Context, network, address string) (net.Conn, error)
	// MaxSessionsPerClient bounds the forward sessions one client has
	// open through coordinator at once. Default 1000.
	MaxSessionsPerClient int
	// MaxClients bounds the clients connected at once. Default 10000.
	MaxClients int
	// Handshakes bounds the connections not yet authenticated. Default:
	// see quictun.HandshakeLimits.
	Handshakes quictun.HandshakeLimits
	// MaxPublicConns bounds the public connections to exposed HTTP apps
	// open at once: on HTTPListen and HTTPSListen together, and on each
	// dedicated HTTP port. At the bound, new ones wait in the listen
	// queue. Default 10000; negative: no bound.
	MaxPublicConns int
	// BodyReadTimeout bounds the wait for each next part of a public
	// request's body: a client that stops sending is answered 408 and the
	// request is ended on every hop. Default 30s.
	BodyReadTimeout time.Duration
	// QlogDir, if set, is an existing directory for a qlog trace of each
	// QUIC connection (debugging).
	QlogDir string
	// ShutdownTimeout is how long Run lets sessions in progress finish
	// once its context ends. Default 0: close them at once.
	ShutdownTimeout time.Duration
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
	// AccessLog receives one line per session. Default: Logger.
	AccessLog *slog.Logger
}

// DefaultMaxPublicConns is Config.MaxPublicConns's default.
const DefaultMaxPublicConns = 10000

// Coordinator is a coordinator with its sockets bound.
type Coordinator struct {
	cfg      Config
	log      *slog.Logger
	targets  *targetPolicy
	auth     atomic.Pointer[authFunc] // current tokens; nil with a single Token
	certAuth atomic.Pointer[authFunc] // current grants by certificate identity; nil without Tokens
	udp      *net.UDPConn
	tcpLn    net.Listener // the TCP transport, with TCPListen
	tr       *quic.Transport
	server   *quictun.Server
	reporter *natt.Server
	stunPC   *net.UDPConn

	// Reverse direction, when HTTPListen, HTTPSListen or PortRange is set.
	registry *registry
	public   *httpproxy.ReverseProxy // serves httpLn and httpsLn, when set
	httpLn   net.Listener
	httpsLn  net.Listener
	stopRegs context.CancelFunc
}

// New binds the sockets. Run serves them.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Listen == "" {
		cfg.Listen = ":4433"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch {
	case cfg.MaxPublicConns == 0:
		cfg.MaxPublicConns = DefaultMaxPublicConns
	case cfg.MaxPublicConns < 0:
		cfg.MaxPublicConns = 0 // httpproxy's "no bound"
	}
	if cfg.Domain == "" {
		cfg.Domain = "localhost"
	}
	switch {
	case cfg.NameGrace == 0:
		cfg.NameGrace = DefaultNameGrace
	case cfg.NameGrace < 0:
		cfg.NameGrace = 0
	}
	if cfg.AccessLog == nil {
		cfg.AccessLog = cfg.Logger
	}
	if err := checkCertEntries(cfg.Tokens, cfg.ClientCAs != nil, cfg.Logger); err != nil {
		return nil, err
	}
	own, err := ownAddrs()
	if err != nil {
		return nil, err
	}
	targets, err := cfg.Targets.compile(own)
	if err != nil {
		return nil, err
	}
	c := &Coordinator{cfg: cfg, log: cfg.Logger, targets: targets}
	if err := c.setupPublic(); err != nil {
		return nil, err
	}
	udp, err := service.ListenUDP(cfg.Listen)
	if err != nil {
		c.closePublic()
		return nil, err
	}
	if advice, err := service.SetUDPBuffers(udp); err != nil {
		c.log.Warn("could not size the UDP socket buffers", "err", err)
	} else if advice != "" {
		c.log.Warn(advice)
	}
	resetKey, err := statelessResetKey(cfg.ResetSecret, cfg.Certificate)
	if err != nil {
		udp.Close()
		c.closePublic()
		return nil, err
	}
	if cfg.TCPListen != "" {
		if c.tcpLn, err = net.Listen("tcp", cfg.TCPListen); err != nil {
			udp.Close()
			c.closePublic()
			return nil, fmt.Errorf("tcp transport: %w", err)
		}
	}
	c.udp, c.tr = udp, &quic.Transport{Conn: udpgro.Wrap(udp), StatelessResetKey: resetKey}
	c.server, err = quictun.NewServer(quictun.ServerConfig{
		Transport:            c.tr,
		Certificate:          cfg.Certificate,
		GetCertificate:       cfg.GetCertificate,
		ExtraALPN:            cfg.ExtraALPN,
		Token:                cfg.Token,
		Authorize:            c.authorize(),
		ClientCAs:            cfg.ClientCAs,
		AuthorizeCert:        c.authorizeCert(),
		DialTarget:           c.dialTarget(),
		TargetDialTimeout:    cfg.TargetDialTimeout,
		DialBackTimeout:      cfg.DialBackTimeout,
		WorkerToken:          cfg.WorkerToken,
		MaxSessionsPerClient: cfg.MaxSessionsPerClient,
		MaxClients:           cfg.MaxClients,
		Handshakes:           cfg.Handshakes,
		QlogDir:              cfg.QlogDir,
		Logger:               c.log,
		AccessLog:            cfg.AccessLog,
		Services:             c.services(),
	})
	if err != nil {
		c.tr.Close()
		c.udp.Close()
		c.closeTCP()
		c.closePublic()
		return nil, err
	}
	if cfg.ReporterListen != "" {
		c.reporter, err = natt.NewServer(natt.ServerConfig{KeepAliveInterval: cfg.ReporterKeepAlive, Logger: c.log.With("component", "reporter")})
		if err == nil {
			c.stunPC, err = service.ListenUDP(cfg.ReporterListen)
		}
		if err != nil {
			c.tr.Close()
			c.udp.Close()
			c.closeTCP()
			c.closePublic()
			return nil, fmt.Errorf("embedded reporter: %w", err)
		}
	}
	return c, nil
}

// setupPublic prepares the reverse direction: the registry of exposed
// services and the public HTTP and HTTPS listeners.
func (c *Coordinator) setupPublic() (err error) {
	if c.cfg.HTTPToHTTPS && (c.cfg.HTTPListen == "" || c.cfg.HTTPSListen == "") {
		return errors.New("redirecting HTTP to HTTPS needs both a public HTTP and an HTTPS address")
	}
	if c.cfg.HTTPListen == "" && c.cfg.HTTPSListen == "" && c.cfg.PortRange == (PortRange{}) {
		if c.cfg.Cluster.enabled() {
			return &ConfigError{"Cluster.Endpoints", "a cluster shares published names and ports: set HTTPListen, HTTPSListen or PortRange"}
		}
		return nil
	}
	if c.cfg.Cluster.enabled() {
		if err := c.cfg.Cluster.validate(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stopRegs = cancel
	c.registry = &registry{
		domain: c.cfg.Domain, httpURL: "http://%s/", bindHost: c.cfg.PublicBind, ports: c.cfg.PortRange,
		listNames: c.cfg.ListNames, servePort: servePort(c.log, c.publicConfig(), nil), log: c.log, ctx: ctx,
		publicConfig: c.publicConfig(), accessLog: c.cfg.AccessLog,
		byName: map[string]*publication{}, byPort: map[uint16]*publication{},
		holds: map[string]*hold{}, portHolds: map[uint16]*hold{},
		grace: c.cfg.NameGrace, statePath: c.cfg.StateFile, dirty: make(chan struct{}, 1),
	}
	defer func() {
		if err != nil {
			c.closePublic()
		}
	}()
	if c.cfg.Cluster.enabled() {
		if err := c.joinCluster(ctx); err != nil {
			return err
		}
	} else if err := c.registry.loadState(); err != nil {
		return err
	}
	if c.cfg.HTTPListen != "" {
		if c.httpLn, err = service.ListenTCP(c.cfg.HTTPListen); err != nil {
			return err
		}
		c.registry.httpURL = urlTemplate("http", c.httpLn, 80)
		if c.registry.cluster != nil {
			c.registry.sniff = c.registry.sniffHTTP(ctx, c.httpLn, c.cfg.MaxPublicConns)
			c.httpLn = c.registry.sniff
		}
	}
	if c.cfg.HTTPSListen != "" {
		if err := c.checkHTTPSCertificate(); err != nil {
			return err
		}
		ln, err := service.ListenTCP(c.cfg.HTTPSListen)
		if err != nil {
			return err
		}
		c.httpsLn = tls.NewListener(ln, &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: c.cfg.HTTPSCertificate,
			NextProtos:     append([]string{"h2", "http/1.1"}, c.cfg.ExtraALPN...), // h2: HTTP/2 (httpproxy serves it)
		})
		// The https URL is the one clients are told: it is the one to use.
		c.registry.httpURL = urlTemplate("https", c.httpsLn, 443)
	}
	if c.httpLn == nil && c.httpsLn == nil {
		return nil
	}
	rc := c.publicConfig()
	rc.Router = c.registry
	if c.cfg.HTTPToHTTPS {
		rc.HTTPSPort = c.httpsLn.Addr().(*net.TCPAddr).Port
	}
	c.public, err = httpproxy.NewReverse(rc)
	return err
}

// joinCluster binds the inter-node link and starts the cluster node: its
// lease, its view of the registry and the forwards from other nodes.
func (c *Coordinator) joinCluster(ctx context.Context) error {
	r, cfg := c.registry, c.cfg.Cluster
	if c.cfg.StateFile != "" {
		c.log.Info("the state file is not used in a cluster: names and ports are kept in etcd", "state_file", c.cfg.StateFile)
	}
	link, err := newClusterLink(cfg.Listen, cfg.Token, c.log.With("component", "cluster-link"))
	if err != nil {
		return err
	}
	addr, err := cfg.advertise(link.Addr())
	if err == nil {
		r.cluster, err = newClusterNode(cfg, addr, c.cfg.NameGrace, c.log, r)
	}
	if err != nil {
		link.close()
		return err
	}
	r.link, r.pending, r.fwd = link, map[string]claimRecord{}, map[uint16]*forwarder{}
	link.serve = r.serveForward
	r.servePort = servePort(c.log, c.publicConfig(), r.cluster.canServe)
	r.wg.Go(func() { link.run(ctx) })
	r.wg.Go(func() { r.cluster.run(ctx) })
	return nil
}

// publicConfig is the configuration of every public HTTP port, but its
// Router.
func (c *Coordinator) publicConfig() httpproxy.ReverseConfig {
	return httpproxy.ReverseConfig{Logger: c.log, AccessLog: c.cfg.AccessLog, MaxConns: c.cfg.MaxPublicConns,
		BodyReadTimeout: c.cfg.BodyReadTimeout, TrustedProxies: c.cfg.TrustedProxies}
}

// urlTemplate is the URL template of exposed names on ln (%s is the host
// name), without the port when it is the scheme's default.
func urlTemplate(scheme string, ln net.Listener, defaultPort int) string {
	if port := ln.Addr().(*net.TCPAddr).Port; port != defaultPort {
		return fmt.Sprintf("%s://%%s:%d/", scheme, port)
	}
	return scheme + "://%s/"
}

// checkHTTPSCertificate sets HTTPSCertificate's default and warns when
// the certificate does not cover the exposed names: browsers would refuse
// every https URL.
func (c *Coordinator) checkHTTPSCertificate() error {
	if c.cfg.HTTPSCertificate == nil {
		cert := c.cfg.Certificate
		c.cfg.HTTPSCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	if c.cfg.HTTPSOnDemand {
		return nil
	}
	probe := "name." + c.cfg.Domain
	cert, err := c.cfg.HTTPSCertificate(&tls.ClientHelloInfo{ServerName: probe})
	if err != nil || cert == nil || len(cert.Certificate) == 0 {
		return fmt.Errorf("HTTPS certificate: none for %s: %v", probe, err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("HTTPS certificate: %w", err)
		}
	}
	if err := leaf.VerifyHostname(probe); err != nil {
		c.log.Warn("the HTTPS certificate does not cover the exposed names: browsers will refuse their https URLs (it needs the name *."+c.cfg.Domain+")",
			"err", err)
	}
	return nil
}

// authFunc checks a token; see authorizer.
type authFunc = func(string) (quictun.Grant, bool)

// authorize returns the token check for Tokens, or nil to use Token. The
// check reads the current tokens, which ReloadTokens replaces.
func (c *Coordinator) authorize() authFunc {
	if len(c.cfg.Tokens) == 0 {
		return nil
	}
	a := authorizer(c.cfg.Tokens)
	c.auth.Store(&a)
	return func(token string) (quictun.Grant, bool) { return (*c.auth.Load())(token) }
}

// authorizeCert returns the certificate identity check for Tokens, or nil
// (every identity allowed) without.
func (c *Coordinator) authorizeCert() authFunc {
	if len(c.cfg.Tokens) == 0 {
		return nil
	}
	a := certAuthorizer(c.cfg.Tokens)
	c.certAuth.Store(&a)
	return func(id string) (quictun.Grant, bool) { return (*c.certAuth.Load())(id) }
}

// ReloadTokens replaces the tokens (a coordinator started with Tokens, not
// Token): clients whose token is gone are disconnected with the
// unauthorized error code, which withdraws their services; changed grants
// apply to later sessions and registrations. It returns how many clients
// were disconnected.
func (c *Coordinator) ReloadTokens(entries []TokenEntry) (int, error) {
	if c.auth.Load() == nil {
		return 0, errors.New("reload tokens: coordinator was started with a single token, not a tokens file")
	}
	if len(entries) == 0 {
		return 0, errors.New("reload tokens: no tokens")
	}
	if err := checkCertEntries(entries, c.cfg.ClientCAs != nil, c.log); err != nil {
		return 0, fmt.Errorf("reload tokens: %w", err)
	}
	a, ca := authorizer(entries), certAuthorizer(entries)
	c.auth.Store(&a)
	c.certAuth.Store(&ca)
	return c.server.Reauthorize(), nil
}

// ReloadTokensFile reads the tokens file at path and applies it with
// ReloadTokens. On any error the tokens in force stay.
func (c *Coordinator) ReloadTokensFile(path string) (int, error) {
	entries, err := LoadTokens(path)
	if err != nil {
		return 0, fmt.Errorf("reload %w; the tokens in force stay", err)
	}
	return c.ReloadTokens(entries)
}

// services returns the registry as a quictun.ServiceRegistry, or nil.
func (c *Coordinator) services() quictun.ServiceRegistry {
	if c.registry == nil {
		return nil
	}
	return c.registry
}

// closePublic stops the reverse direction.
func (c *Coordinator) closePublic() {
	if c.public != nil {
		c.public.Close()
	}
	for _, ln := range []net.Listener{c.httpLn, c.httpsLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if c.registry != nil {
		c.stopRegs()
		c.registry.close()
	}
}

// HTTPAddr is the public HTTP listener's address, or nil.
func (c *Coordinator) HTTPAddr() net.Addr {
	if c.httpLn == nil {
		return nil
	}
	return c.httpLn.Addr()
}

// HTTPSAddr is the public HTTPS listener's address, or nil.
func (c *Coordinator) HTTPSAddr() net.Addr {
	if c.httpsLn == nil {
		return nil
	}
	return c.httpsLn.Addr()
}

// Addr is the QUIC socket's address.
func (c *Coordinator) Addr() net.Addr { return c.udp.LocalAddr() }

// ReporterAddr is the embedded reporter's address, or nil.
func (c *Coordinator) ReporterAddr() net.Addr {
	if c.stunPC == nil {
		return nil
	}
	return c.stunPC.LocalAddr()
}

// RegisterMetrics adds the coordinator's metrics to r.
func (c *Coordinator) RegisterMetrics(r *metrics.Registry) {
	r.AddTunnelServer(c.server)
	if _, ok := c.ClusterStatus(); ok {
		r.HandlePage("GET /cluster", http.HandlerFunc(c.serveClusterStatus))
	}
	if c.cfg.DialTarget == nil {
		c.targets.registerMetrics(r)
	}
	if c.reporter != nil {
		r.AddReporter(c.reporter)
	}
	if c.public != nil {
		r.AddHTTP("public", c.public.Stats)
	}
	if c.registry != nil {
		r.Gauge("exposed_services", "Services published now.", func() float64 {
			c.registry.mu.Lock()
			defer c.registry.mu.Unlock()
			seen := map[*quictun.Service]bool{}
			for _, p := range c.registry.byName {
				seen[p.svc] = true
			}
			for _, p := range c.registry.byPort {
				seen[p.svc] = true
			}
			return float64(len(seen))
		})
	}
	if c.registry != nil && c.registry.cluster != nil {
		c.registry.cluster.registerMetrics(r)
	}
}

// closeTCP closes the TCP transport's listener, if any.
func (c *Coordinator) closeTCP() {
	if c.tcpLn != nil {
		c.tcpLn.Close()
	}
}

// TCPAddr is the TCP transport's address, nil without TCPListen.
func (c *Coordinator) TCPAddr() net.Addr {
	if c.tcpLn == nil {
		return nil
	}
	return c.tcpLn.Addr()
}

// Server exposes the tunnel server, for status and tests.
func (c *Coordinator) Server() *quictun.Server { return c.server }

// Run serves until ctx ends, then drains for up to ShutdownTimeout (no new
// clients or sessions; those in progress may finish) and closes every
// connection and socket.
func (c *Coordinator) Run(ctx context.Context) error {
	defer c.udp.Close()
	defer c.tr.Close()
	hard, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	g, gctx := errgroup.WithContext(hard)
	g.Go(func() error { return c.server.Serve(gctx) })
	defer c.closePublic()
	if c.tcpLn != nil {
		defer c.closeTCP()
		g.Go(func() error { return c.server.ServeTCP(gctx, c.tcpLn) })
	}
	targets := c.targets.String()
	if c.cfg.DialTarget != nil {
		targets = "decided by the embedding program (Config.DialTarget)"
	}
	summary := []any{"quic", c.udp.LocalAddr(), "targets", targets}
	if c.tcpLn != nil {
		summary = append(summary, "tcp", c.tcpLn.Addr())
	}
	if c.public != nil {
		for _, ln := range []net.Listener{c.httpLn, c.httpsLn} {
			if ln != nil {
				g.Go(func() error { return c.public.Serve(ln) })
			}
		}
		g.Go(func() error { <-gctx.Done(); return c.public.Close() })
		if c.httpLn != nil {
			summary = append(summary, "http", c.httpLn.Addr())
		}
		if c.httpsLn != nil {
			summary = append(summary, "https", c.httpsLn.Addr())
		}
		summary = append(summary, "domain", c.cfg.Domain)
	}
	if c.cfg.PortRange != (PortRange{}) {
		summary = append(summary, "ports", fmt.Sprintf("%d-%d", c.cfg.PortRange.Min, c.cfg.PortRange.Max))
	}
	if c.reporter != nil {
		defer c.stunPC.Close()
		g.Go(func() error { return c.reporter.Serve(gctx, c.stunPC) })
		summary = append(summary, "reporter", c.stunPC.LocalAddr())
	}
	g.Go(func() error {
		select {
		case <-ctx.Done():
			c.drain()
		case <-gctx.Done():
		}
		stop()
		return nil
	})
	c.log.Info("coordinator ready", summary...)
	return g.Wait()
}

// drain lets sessions in progress finish, for up to ShutdownTimeout.
func (c *Coordinator) drain() {
	if c.cfg.ShutdownTimeout <= 0 {
		return
	}
	st := c.server.Stats()
	c.log.Info("draining: no new clients or sessions", "sessions_active", st.ActiveSessions, "timeout", c.cfg.ShutdownTimeout)
	ctx, cancel := context.WithTimeoutCause(context.Background(), c.cfg.ShutdownTimeout,
		fmt.Errorf("--shutdown-timeout %s passed", c.cfg.ShutdownTimeout))
	defer cancel()
	var g errgroup.Group
	g.Go(func() error { return c.server.Drain(ctx) })
	if c.public != nil {
		g.Go(func() error { return c.public.Drain(ctx) })
	}
	if err := g.Wait(); err != nil {
		c.log.Warn("closing sessions still open", "err", err)
		return
	}
	c.log.Info("drained: every session finished")
}

// dialTarget is Config.DialTarget, or the target policy's dialer.
func (c *Coordinator) dialTarget() func(ctx context.Context, network, address string) (net.Conn, error) {
	if c.cfg.DialTarget != nil {
		return c.cfg.DialTarget
	}
	return c.targets.dialer()
}
