package quictun

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
)

// ClientConfig configures the localproxy side of the tunnel. The zero value
// of every optional field selects the default given in its comment.
type ClientConfig struct {
	// Transport is the QUIC transport on localproxy's one UDP socket.
	// The client dials coordinator from it and serves dial-backs on it.
	// Required; the caller owns it and closes it after Run returns.
	Transport *quic.Transport
	// Coordinator is coordinator's address, "host:port". Required unless
	// Coordinators is set.
	Coordinator string
	// Coordinators, instead of Coordinator and CoordinatorTCP, are
	// several coordinators to choose from: the client connects to the
	// nearest that answers and, when that one dies, to another (see
	// failover.go). A host name that resolves to several addresses gives a
	// candidate per address too. Default: Coordinator alone.
	Coordinators []Node
	// Via picks the transport to coordinator: TransportQUIC (default),
	// TransportTCP (TLS over TCP to CoordinatorTCP), or TransportAuto:
	// QUIC, and TCP when QUIC has no handshake within QUICFallback.
	Via string
	// CoordinatorTCP is coordinator's TCP transport, "host:port".
	// Default: Coordinator.
	CoordinatorTCP string
	// QUICFallback is how long auto waits for QUIC's handshake before it
	// uses TCP. Default 2s.
	QUICFallback time.Duration
	// QUICProbe is how long auto, connected over TCP, waits before it
	// tries QUIC again; the wait doubles after each failure, up to 5
	// minutes. Default 5s.
	QUICProbe time.Duration
	// DialTCP, if set, makes the TCP connection to CoordinatorTCP (through
	// an upstream proxy, say). Default: a plain net.Dialer.
	DialTCP func(ctx context.Context, addr string) (net.Conn, error)
	// Token authenticates this client. Required unless Certificate is set.
	Token string
	// Certificate, if set, is presented to coordinator as client
	// certificate (mutual TLS), for a coordinator with ServerConfig.ClientCAs.
	Certificate *tls.Certificate
	// Name identifies the client in coordinator's logs. Default: none.
	Name string
	// RootCAs verifies coordinator's certificate. Default: the system roots.
	RootCAs *x509.CertPool
	// ServerName is the name coordinator's certificate must carry.
	// Default: the host part of the coordinator's address.
	ServerName string
	// InsecureSkipVerify accepts any coordinator certificate. The
	// connection is still encrypted and dial-backs are still pinned to the
	// certificate seen, but anyone on the path can impersonate coordinator.
	InsecureSkipVerify bool
	// PublicAddr is the public address learnt from the reporter, told to
	// coordinator for dial-backs. Default: unknown, and coordinator dials
	// back to the source address it observes.
	PublicAddr netip.AddrPort
	// OpenTimeout bounds the wait for coordinator's answer to Open, which
	// includes coordinator dialing the target. Default 15s.
	OpenTimeout time.Duration
	// DialBackTimeout bounds the wait for the dial-back stream once
	// coordinator has reached the target. Default 10s.
	DialBackTimeout time.Duration
	// SilenceTimeout is how long a session being opened may go without a
	// single packet from coordinator (a live one acknowledges the Open
	// within a round trip, however slow the target) before it fails with
	// ErrCoordinatorUnavailable, instead of waiting for OpenTimeout. The
	// connection itself is left to the QUIC idle timeout (30 s), so a path
	// that comes back keeps its sessions. Default 5s.
	SilenceTimeout time.Duration
	// FastOpen makes Dial return as soon as it has sent a FastOpen,
	// without waiting for coordinator: the caller writes at once, and
	// coordinator relays the session on the Open stream instead of dialing
	// back. Saves a round trip per session (a browser's CONNECT gets its
	// 200 at once); the price is that a target coordinator cannot reach is
	// reported on the first Read, as a *SessionError, not by Dial.
	FastOpen bool
	// ConnectTimeout bounds one attempt to connect to coordinator, and how
	// long Dial waits for a connection while none is up. Default 5s.
	ConnectTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the exponential backoff (with
	// jitter) between reconnection attempts. Defaults 250ms and 30s.
	ReconnectMin, ReconnectMax time.Duration
	// RegisterRetry is the first wait before a service coordinator
	// refused because its name or port is taken is asked for again; the
	// wait doubles up to 12 times RegisterRetry (a minute by default), for
	// as long as the connection lasts. Default 5s.
	RegisterRetry time.Duration
	// MaxPendingSessions bounds sessions waiting for their dial-back; a
	// Dial beyond it fails with ErrTooManySessions. Default 10000.
	MaxPendingSessions int
	// MaxStreams bounds concurrent dial-back streams. Default 10000.
	MaxStreams int64
	// KeepAlive is how often the client's connections send a packet when
	// idle, so the NAT keeps their mappings: keep it below the NAT's UDP
	// timeout (NAT_KEEP_ALIVE_INTERVAL). Default 10s.
	KeepAlive time.Duration
	// Services are the local apps to expose through coordinator.
	Services []ExposedService
	// Handshakes bounds the connections to the tunnel creation service not
	// yet authenticated (until coordinator's pinned certificate is seen).
	// Default: see HandshakeLimits.
	Handshakes HandshakeLimits
	// RequestLog asks coordinator for a record of every public request
	// relayed to the exposed apps and writes a line for each to
	// AccessLog (wire flow step 8). Off, coordinator sends none.
	RequestLog bool
	// OnRequestLog, if set, is also given each RequestLog record (with
	// RequestLog on). It must not block.
	OnRequestLog func(*RequestLog)
	// WrapApp, if set, may wrap the connection to a local app of each
	// reverse session (to observe its bytes); the result is relayed
	// instead. It must keep CloseWrite working.
	WrapApp func(svc ExposedService, ro ReverseOpen, app net.Conn) net.Conn
	// QlogDir, if set, is an existing directory that receives a qlog trace
	// of each QUIC connection (for debugging; the files grow with traffic).
	QlogDir string
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
	// AccessLog receives one line per reverse session. Default: Logger.
	AccessLog *slog.Logger
}

func (c *ClientConfig) validate() error {
	switch {
	case c.Transport == nil:
		return &ConfigError{"Transport", "required"}
	case c.Coordinator == "" && len(c.Coordinators) == 0:
		return &ConfigError{"Coordinator", "required"}
	case c.Coordinator != "" && len(c.Coordinators) > 0:
		return &ConfigError{"Coordinators", "give Coordinator or Coordinators, not both"}
	case c.Token == "" && c.Certificate == nil:
		return &ConfigError{"Token", "required unless a client Certificate is given"}
	case len(c.Token) > maxTokenLen:
		return &ConfigError{"Token", "longer than 1024 bytes"}
	case len(c.Name) > maxNameLen:
		return &ConfigError{"Name", "longer than 256 bytes"}
	case c.Via != "" && c.Via != TransportQUIC && c.Via != TransportTCP && c.Via != TransportAuto:
		return &ConfigError{"Via", fmt.Sprintf("%q is none of auto, quic, tcp", c.Via)}
	}
	if c.Coordinator != "" {
		if _, _, err := net.SplitHostPort(c.Coordinator); err != nil {
			return &ConfigError{"Coordinator", "want host:port: " + err.Error()}
		}
	}
	for _, n := range c.Coordinators {
		if err := n.validate(); err != nil {
			return &ConfigError{"Coordinators", err.Error()}
		}
	}
	seen := map[string]bool{}
	ports := map[uint16]string{}
	for _, svc := range c.Services {
		field := "Services[" + svc.Name + "]"
		switch {
		case svc.Port != 0 && ports[svc.Port] != "":
			return &ConfigError{field, fmt.Sprintf("public port %d is asked for by %q too: give each service a port of its own", svc.Port, ports[svc.Port])}
		case !ValidServiceName(svc.Name):
			return &ConfigError{field, "a name is 1-63 letters, digits or '-', not starting or ending with '-'"}
		case seen[svc.Name]:
			return &ConfigError{field, "exposed twice"}
		case svc.Kind != ServiceHTTP && svc.Kind != ServiceTCP:
			return &ConfigError{field, "kind must be http or tcp"}
		case svc.HostHeader != "" && svc.Kind != ServiceHTTP:
			return &ConfigError{field, "a Host header applies to http services only"}
		case svc.BasicAuth != nil && svc.Kind != ServiceHTTP:
			return &ConfigError{field, "basic auth applies to http services only"}
		case len(svc.AllowFrom) > maxAllowFrom:
			return &ConfigError{field, fmt.Sprintf("allow-from has %d prefixes, at most %d", len(svc.AllowFrom), maxAllowFrom)}
		case slices.ContainsFunc(svc.AllowFrom, func(p netip.Prefix) bool { return !p.IsValid() }):
			return &ConfigError{field, "allow-from has an invalid prefix"}
		case svc.HostHeader != "" && !ValidHostHeader(svc.HostHeader):
			return &ConfigError{field, fmt.Sprintf("Host header %q: want HOST or HOST:PORT", svc.HostHeader)}
		}
		if _, _, err := net.SplitHostPort(svc.Local); err != nil {
			return &ConfigError{field, "local app must be host:port: " + err.Error()}
		}
		seen[svc.Name] = true
		if svc.Port != 0 {
			ports[svc.Port] = svc.Name
		}
	}
	return c.Handshakes.validate("Handshakes")
}

// ValidHostHeader reports whether h can be sent as a Host header: a DNS
// name or IPv4 address, or a bracketed IPv6 address, each with an optional
// port. Nothing else gets through (no spaces, commas or line breaks).
func ValidHostHeader(h string) bool {
	if h == "" || len(h) > maxNameLen {
		return false
	}
	host, port := h, ""
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return false
		}
		// No zone: netip takes any bytes after the %, and a Host
		// header has no place for one.
		if a, err := netip.ParseAddr(h[1:end]); err != nil || !a.Is6() || a.Zone() != "" {
			return false
		}
		host, port = "", h[end+1:]
		if port != "" {
			p, ok := strings.CutPrefix(port, ":")
			if !ok || p == "" {
				return false
			}
			port = p
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 {
		host, port = h[:i], h[i+1:]
		if port == "" {
			return false
		}
	}
	if port != "" {
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 || port[0] == '+' {
			return false
		}
	}
	if h[0] == '[' {
		return true
	}
	if host == "" {
		return false
	}
	for _, r := range host {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '.' || r == '_') {
			return false
		}
	}
	return true
}

// ValidServiceName reports whether name can be a service name: one DNS
// label (it becomes NAME.DOMAIN).
func ValidServiceName(name string) bool {
	if len(name) == 0 || len(name) > 63 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for _, r := range name {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

func (c *ClientConfig) setDefaults() {
	setDefault(&c.OpenTimeout, 15*time.Second)
	setDefault(&c.DialBackTimeout, 10*time.Second)
	setDefault(&c.SilenceTimeout, 5*time.Second)
	setDefault(&c.ConnectTimeout, 5*time.Second)
	setDefault(&c.ReconnectMin, 250*time.Millisecond)
	setDefault(&c.ReconnectMax, 30*time.Second)
	setDefault(&c.RegisterRetry, 5*time.Second)
	setDefault(&c.MaxPendingSessions, 10000)
	setDefault(&c.MaxStreams, 10000)
	setDefault(&c.KeepAlive, 10*time.Second)
	setDefault(&c.QUICFallback, 2*time.Second)
	setDefault(&c.QUICProbe, 5*time.Second)
	setDefault(&c.Via, TransportQUIC)
	if len(c.Coordinators) == 0 {
		c.Coordinators = []Node{{Addr: c.Coordinator, TCP: c.CoordinatorTCP}}
	}
	c.Coordinators = slices.Clone(c.Coordinators)
	for i := range c.Coordinators {
		setDefault(&c.Coordinators[i].TCP, c.Coordinators[i].Addr)
	}
	c.Handshakes.setDefaults()
	c.Logger = orDiscard(c.Logger)
	if c.AccessLog == nil {
		c.AccessLog = c.Logger
	}
}

// ServerConfig configures the coordinator side of the tunnel. The zero
// value of every optional field selects the default given in its comment.
type ServerConfig struct {
	// Transport is the QUIC transport on coordinator's UDP socket. The
	// server listens on it and dials back from it, so dial-backs come from
	// the address clients already send to. Required; the caller owns it.
	Transport *quic.Transport
	// Certificate is coordinator's TLS certificate, also presented as
	// client certificate on dial-backs. Required unless GetCertificate is
	// set.
	Certificate tls.Certificate
	// GetCertificate, if set, gives the certificate for each new
	// connection instead of Certificate (as tls.Config.GetCertificate), so
	// a renewed certificate serves new connections while the others stay
	// up. Dial-backs to a client present the certificate it got when it
	// connected, the one it pinned.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// ExtraALPN are ALPN protocols ServeTCP offers beside the tunnel's,
	// for GetCertificate to answer (an ACME CA's TLS-ALPN-01 challenge,
	// acme-tls/1); such a connection is closed after its handshake.
	ExtraALPN []string
	// Token is the shared secret clients must present. Required unless
	// Authorize or ClientCAs is set.
	Token string
	// ClientCAs, if set, makes clients authenticate with a certificate
	// signed by one of these CAs (mutual TLS) instead of a token: a client
	// without one is refused with CodeUnauthorized, a certificate from
	// another CA fails the TLS handshake, and the token in Hello is
	// ignored. Dial-back workers still use WorkerToken.
	ClientCAs *x509.CertPool
	// AuthorizeCert decides what the client whose certificate names
	// identity (its subject common name, else its first DNS name) may do;
	// it must be safe for concurrent use. Server.Reauthorize calls it
	// again for connected clients. Default: everything, as that client.
	AuthorizeCert func(identity string) (Grant, bool)
	// Authorize, if set, decides which tokens are valid and what each may
	// do; it must compare in constant time and be safe for concurrent
	// use. Server.Reauthorize calls it again for connected clients.
	// Default: Token, allowed all.
	Authorize func(token string) (Grant, bool)
	// Services publishes the services clients expose. Default: none, and
	// registrations are refused.
	Services ServiceRegistry
	// DialTarget opens the TCP connection to a session's target. An error
	// wrapping ErrTargetForbidden refuses the session with
	// CodeTargetForbidden. Default: a net.Dialer, which dials anything.
	DialTarget func(ctx context.Context, network, address string) (net.Conn, error)
	// TargetDialTimeout bounds dialing a target. Default 10s.
	TargetDialTimeout time.Duration
	// DialBackTimeout bounds establishing the dial-back connection and
	// opening a stream on it. Default 10s.
	DialBackTimeout time.Duration
	// RelayAfter bounds the wait for a dial-back before the session is
	// carried over the client's own connection instead (relay), for
	// clients behind NATs that let no dial-back in. Default 2s.
	RelayAfter time.Duration
	// DisableRelay makes a failed dial-back fail the session (504).
	DisableRelay bool
	// WorkerToken is the secret dial-back workers (coordinator --role
	// dialback) present. Default: none, and workers are refused.
	WorkerToken string
	// HelloTimeout bounds the wait for a new client's Hello, and its QUIC
	// handshake. Default 10s.
	HelloTimeout time.Duration
	// Handshakes bounds the connections not yet authenticated (until a
	// valid Hello). Default: see HandshakeLimits.
	Handshakes HandshakeLimits
	// MaxStreams bounds concurrent session set-ups per client. Default 10000.
	MaxStreams int64
	// MaxSessionsPerClient bounds the forward sessions one client
	// connection has open at once (being set up or carrying data); an Open
	// beyond it is answered CodeLimit. Default 10000.
	MaxSessionsPerClient int
	// MaxClients bounds the clients connected at once; a client beyond it
	// is refused, once authenticated, by closing its connection with
	// CodeLimit. Dial-back workers do not count. Default 10000.
	MaxClients int
	// QlogDir, if set, is an existing directory that receives a qlog trace
	// of each QUIC connection (for debugging; the files grow with traffic).
	QlogDir string
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
	// AccessLog receives one line per session. Default: Logger.
	AccessLog *slog.Logger
}

func (c *ServerConfig) validate() error {
	switch {
	case c.Transport == nil:
		return &ConfigError{"Transport", "required"}
	case len(c.Certificate.Certificate) == 0 && c.GetCertificate == nil:
		return &ConfigError{"Certificate", "required unless GetCertificate is set"}
	case c.Token == "" && c.Authorize == nil && c.ClientCAs == nil:
		return &ConfigError{"Token", "required unless Authorize or ClientCAs is set"}
	case c.MaxSessionsPerClient < 0:
		return &ConfigError{"MaxSessionsPerClient", "negative"}
	case c.MaxClients < 0:
		return &ConfigError{"MaxClients", "negative"}
	}
	return c.Handshakes.validate("Handshakes")
}

func (c *ServerConfig) setDefaults() {
	setDefault(&c.TargetDialTimeout, 10*time.Second)
	setDefault(&c.DialBackTimeout, 10*time.Second)
	setDefault(&c.HelloTimeout, 10*time.Second)
	setDefault(&c.RelayAfter, 2*time.Second)
	setDefault(&c.MaxStreams, 10000)
	setDefault(&c.MaxSessionsPerClient, 10000)
	setDefault(&c.MaxClients, 10000)
	c.Handshakes.setDefaults()
	if c.DialTarget == nil {
		d := &net.Dialer{Timeout: c.TargetDialTimeout}
		c.DialTarget = d.DialContext
	}
	if c.AuthorizeCert == nil {
		c.AuthorizeCert = func(id string) (Grant, bool) { return Grant{Client: id}, true }
	}
	if c.Authorize == nil {
		token := []byte(c.Token)
		c.Authorize = func(t string) (Grant, bool) {
			return Grant{}, subtle.ConstantTimeCompare([]byte(t), token) == 1
		}
	}
	c.Logger = orDiscard(c.Logger)
	if c.AccessLog == nil {
		c.AccessLog = c.Logger
	}
}

// Grant is what a token allows.
type Grant struct {
	// Client names the client in logs instead of the name it gives.
	Client string
	// Names lists the service names the token may expose; nil allows any.
	Names []string
	// NoForward refuses forward-proxy sessions (dialing targets).
	NoForward bool
}

func (g Grant) allowsName(name string) bool {
	return g.Names == nil || slices.Contains(g.Names, name)
}

// QUICConfig returns the QUIC settings both ends use (benchmarks use it
// too, to compare bare quic-go with the tunnel on equal terms). Flow-control windows
// are sized for a fast path (a 16 MiB stream window covers 1 Gbit/s at
// 128 ms RTT); quic-go grows windows on demand, so idle sessions stay small.
func QUICConfig(maxStreams int64, handshake time.Duration) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           handshake,
		MaxIdleTimeout:                 30 * time.Second,
		KeepAlivePeriod:                10 * time.Second,
		MaxIncomingStreams:             maxStreams,
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     512 << 10,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 1 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
	}
}

func setDefault[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return l
}
