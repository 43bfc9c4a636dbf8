package httpproxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Proxy is the browser-facing forward proxy: absolute-form HTTP requests
// and CONNECT tunnels, each reaching its target through the Dialer.
type Proxy struct{ e *engine }

// New validates cfg and returns a proxy. Serve starts it.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	e := newEngine(cfg, forwardRouter{cfg.Dialer})
	e.auth = NewBasicAuth(cfg.ProxyAuth)
	return &Proxy{e: e}, nil
}

// Serve accepts browser connections on ln until Close; it then returns nil.
func (p *Proxy) Serve(ln net.Listener) error { return p.e.serve(ln) }

// Close stops every listener, closes every browser connection and tunnel,
// and waits for their goroutines.
func (p *Proxy) Close() error { return p.e.close() }

// Drain stops accepting connections, closes those waiting for a request
// and lets the others finish the exchange or tunnel they carry. It returns
// nil once none is left, or ctx's cause when ctx ends first; Close then
// ends what remains.
func (p *Proxy) Drain(ctx context.Context) error { return p.e.drain(ctx) }

// Stats returns a snapshot of the proxy's counters.
func (p *Proxy) Stats() Stats { return p.e.snapshot() }

// forwardRouter sends absolute-form requests to the host in their URL.
type forwardRouter struct{ d Dialer }

func (f forwardRouter) route(_ context.Context, h *head, _ net.Conn) (*route, error) {
	if strings.HasPrefix(h.target, "/") || h.target == "*" {
		return nil, &httpError{http.StatusBadRequest, "this is an HTTP proxy: configure it as the browser's proxy " +
			"(it expects absolute URLs such as GET http://example.com/ or CONNECT example.com:443)"}
	}
	scheme, rest, ok := strings.Cut(h.target, "://")
	if !ok {
		return nil, &httpError{http.StatusBadRequest, fmt.Sprintf("request target %q is not an absolute URL", truncate(h.target))}
	}
	if !strings.EqualFold(scheme, "http") {
		return nil, &httpError{http.StatusBadRequest, fmt.Sprintf("scheme %q not supported here: use CONNECT (set this proxy for HTTPS too)", truncate(scheme))}
	}
	authority, path := rest, "/"
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, path = rest[:i], rest[i:]
		if path[0] == '?' {
			path = "/" + path
		}
	} else if h.method == "OPTIONS" {
		path = "*"
	}
	u, err := url.Parse("http://" + authority)
	if err != nil || u.Host == "" || u.Hostname() == "" {
		return nil, &httpError{http.StatusBadRequest, fmt.Sprintf("bad host in %q", truncate(h.target))}
	}
	hostport := u.Host
	if u.Port() == "" {
		hostport = net.JoinHostPort(u.Hostname(), "80")
	}
	return &route{
		key:        hostport,
		target:     h.target,
		requestURI: path,
		addHost:    u.Host,
		dial:       func(ctx context.Context) (net.Conn, error) { return f.d.DialTarget(ctx, hostport) },
	}, nil
}

func (f forwardRouter) connect(_ context.Context, target string) (*route, error) {
	return &route{key: target, target: target,
		dial: func(ctx context.Context) (net.Conn, error) { return f.d.DialTarget(ctx, target) }}, nil
}
