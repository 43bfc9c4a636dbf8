package httpproxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Backend reaches the exposed app behind one public name.
type Backend interface {
	// Name is the service name, for logs.
	Name() string
	// Dial opens a connection to the app for the public client remote.
	// A *DialError chooses the status the client sees.
	Dial(ctx context.Context, remote netip.AddrPort) (net.Conn, error)
}

// HostRewriter is a Backend whose app gets another Host header than the
// public one (X-Forwarded-Host keeps the public one). HostHeader returns
// the value, or "" to keep the request's.
type HostRewriter interface {
	Backend
	HostHeader() string
}

// GuardedBackend is a Backend whose requests must carry the right Basic
// credentials in Authorization: others are answered 401 with a challenge
// and never reach the app, and the field is not passed on. BasicAuth
// returns the check, or nil to let every request through.
type GuardedBackend interface {
	Backend
	BasicAuth() *BasicAuth
}

// SourceFilter is a Backend that only some public clients may reach:
// AllowsSource reports whether remote may. The others are answered 403.
type SourceFilter interface {
	Backend
	AllowsSource(remote netip.AddrPort) bool
}

// authRequired is a route refused for missing or wrong credentials.
type authRequired struct{ target, realm string }

func (e *authRequired) Error() string { return "authentication required for " + e.realm }

// Router finds the backend for a request's Host. When there is none it
// returns a *DialError: 404 for an unknown name, 502 for a client that
// went offline.
type Router interface {
	Route(host string) (Backend, error)
}

// ReverseConfig configures a ReverseProxy. Zero values select the
// defaults given.
type ReverseConfig struct {
	// Router picks the backend for each request. Required.
	Router Router
	// Proto is the scheme clients used on plain connections, for
	// X-Forwarded-Proto and Forwarded. Default "http". Connections that are
	// a *tls.Conn (a listener made with tls.NewListener) are "https".
	Proto string
	// HTTPSPort, if set, answers every request on a plain connection
	// with 308 Permanent Redirect to the same URL on https:// at this
	// port, before routing or credentials: only TLS connections reach
	// the apps.
	HTTPSPort int
	// TrustedProxies are the peers (load balancers in front of the
	// public port) whose forwarding fields are kept: Forwarded and
	// X-Forwarded-For get this hop appended, X-Forwarded-Proto, -Host,
	// -Port and X-Real-IP stand. From any other peer all of them are
	// dropped and written afresh. Default: none.
	TrustedProxies []netip.Prefix
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
	// AccessLog receives one line per request. Default: Logger.
	AccessLog *slog.Logger
	// MaxHeaderBytes, MaxConns, ReadHeaderTimeout, IdleTimeout,
	// ResponseHeaderTimeout and BodyReadTimeout mean what they mean in
	// Config, with the same defaults.
	MaxHeaderBytes, MaxConns                              int
	ReadHeaderTimeout, IdleTimeout, ResponseHeaderTimeout time.Duration
	BodyReadTimeout                                       time.Duration
}

// RequestReporter is an upstream connection that wants a record of each
// request relayed over it: the proxy calls ReportRequest once the
// exchange is over, after its access-log line. (coordinator passes the
// records on to the client whose app answered.) It must not block.
type RequestReporter interface {
	ReportRequest(RequestRecord)
}

// RequestRecord is one relayed request, as its access-log line has it.
type RequestRecord struct {
	Client   netip.AddrPort // the connection's peer
	Method   string
	Target   string
	Status   int
	Up, Down int64 // body bytes each way
	Duration time.Duration
	TLS      bool   // the client's connection was TLS
	Outcome  string // "ok", "canceled", or what went wrong
}

// ReverseProxy serves the public side of exposed apps: it routes each
// request by its Host to a Backend, writes the forwarding fields
// (Forwarded, X-Forwarded-For, -Proto, -Host, X-Real-IP; see
// TrustedProxies), and relays the
// exchange like Proxy does (headers byte for byte, bodies streamed,
// upgrades and server-sent events passed through).
type ReverseProxy struct{ e *engine }

// NewReverse validates cfg and returns a reverse proxy. Serve starts it.
func NewReverse(cfg ReverseConfig) (*ReverseProxy, error) {
	if cfg.Router == nil {
		return nil, &ConfigError{"Router", "required"}
	}
	if cfg.Proto == "" {
		cfg.Proto = "http"
	}
	c := Config{Dialer: noDialer{}, Logger: cfg.Logger, AccessLog: cfg.AccessLog, MaxHeaderBytes: cfg.MaxHeaderBytes, MaxConns: cfg.MaxConns,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout, IdleTimeout: cfg.IdleTimeout, ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
		BodyReadTimeout: cfg.BodyReadTimeout}
	if err := c.validate(); err != nil {
		return nil, err
	}
	c.setDefaults()
	if cfg.HTTPSPort < 0 || cfg.HTTPSPort > 65535 {
		return nil, &ConfigError{"HTTPSPort", "must be a port number"}
	}
	for _, p := range cfg.TrustedProxies {
		if !p.IsValid() || p.Addr().Is4In6() {
			return nil, &ConfigError{"TrustedProxies", fmt.Sprintf("%s is not an IPv4 or IPv6 prefix", p)}
		}
	}
	return &ReverseProxy{e: newEngine(c, reverseRouter{r: cfg.Router, proto: cfg.Proto, httpsPort: cfg.HTTPSPort,
		trusted: slices.Clone(cfg.TrustedProxies)})}, nil
}

// Serve accepts public connections on ln until Close; it then returns nil.
// It may be called for several listeners, plain and TLS, at once.
func (p *ReverseProxy) Serve(ln net.Listener) error { return p.e.serve(ln) }

// Close stops every listener and connection and waits for them.
func (p *ReverseProxy) Close() error { return p.e.close() }

// Drain stops accepting connections, closes those waiting for a request
// and lets the others finish the exchange or tunnel they carry. It returns
// nil once none is left, or ctx's cause when ctx ends first; Close then
// ends what remains.
func (p *ReverseProxy) Drain(ctx context.Context) error { return p.e.drain(ctx) }

// Stats returns a snapshot of the proxy's counters.
func (p *ReverseProxy) Stats() Stats { return p.e.snapshot() }

// noDialer stands in for the forward Dialer a reverse proxy never uses.
type noDialer struct{}

func (noDialer) DialTarget(context.Context, string) (net.Conn, error) {
	return nil, &DialError{Status: http.StatusMethodNotAllowed, Reason: "not a forward proxy"}
}

type reverseRouter struct {
	r         Router
	proto     string
	httpsPort int            // redirect plain requests there; 0: serve them
	trusted   []netip.Prefix // peers whose forwarding fields are kept
}

// redirectToHTTPS is a plain request answered with a redirect.
type redirectToHTTPS struct{ location string }

func (e *redirectToHTTPS) Error() string { return "redirected to " + e.location }

func (rr reverseRouter) route(_ context.Context, h *head, client net.Conn) (*route, error) {
	host, ok := h.get("Host")
	if !ok || host == "" {
		return nil, &httpError{http.StatusBadRequest, "request has no Host header"}
	}
	uri := h.target
	if !strings.HasPrefix(uri, "/") && uri != "*" {
		// Absolute-form to an origin (RFC 9112 §3.2.2): keep the path.
		_, rest, _ := strings.Cut(uri, "://")
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			uri = rest[i:]
		} else {
			uri = "/"
		}
	}
	_, isTLS := client.(*tls.Conn)
	if rr.httpsPort != 0 && !isTLS {
		name := host
		if h, _, err := net.SplitHostPort(host); err == nil {
			name = h
		}
		if strings.Contains(name, ":") {
			name = "[" + name + "]"
		}
		if rr.httpsPort != 443 {
			name += ":" + strconv.Itoa(rr.httpsPort)
		}
		return nil, &redirectToHTTPS{location: "https://" + name + uri}
	}
	b, err := rr.r.Route(host)
	if err != nil {
		return nil, err
	}
	remote := addrPortOf(client.RemoteAddr())
	proto := rr.proto
	if isTLS {
		proto = "https"
	}
	if sf, ok := b.(SourceFilter); ok && !sf.AllowsSource(remote) {
		return nil, &httpError{http.StatusForbidden, fmt.Sprintf("%s is not open to your address %s", host, remote.Addr())}
	}
	drop, extra := forwardingNames, forwardingFields(h, remote, host, proto, trustedPeer(rr.trusted, remote.Addr()))
	if g, ok := b.(GuardedBackend); ok {
		if auth := g.BasicAuth(); auth != nil {
			if !auth.allows(h, "Authorization") {
				realm, _, _ := strings.Cut(host, ":")
				return nil, &authRequired{target: host + uri, realm: realm}
			}
			drop = append(slices.Clip(drop), "authorization") // the tunnel's credentials, not the app's
		}
	}
	if hr, ok := b.(HostRewriter); ok {
		if v := hr.HostHeader(); v != "" {
			drop, extra = append(slices.Clip(drop), "host"), append([]string{"Host: " + v}, extra...)
		}
	}
	return &route{
		key:        b.Name(),
		target:     host + uri,
		requestURI: uri,
		drop:       drop,
		extra:      extra,
		dial:       func(ctx context.Context) (net.Conn, error) { return b.Dial(ctx, remote) },
	}, nil
}

func (reverseRouter) connect(context.Context, string) (*route, error) {
	return nil, fmt.Errorf("CONNECT is not served here: this is the public side of exposed apps")
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
