package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"quictunnel/httpproxy"
	"quictunnel/quictun"
)

// Route implements httpproxy.Router: NAME.DOMAIN to the service exposed
// under NAME.
func (r *registry) Route(host string) (httpproxy.Backend, error) {
	svc, offline := r.lookup(host)
	if r.cluster != nil && svc == nil {
		if name, ok := r.nameOf(host); ok {
			if b, found, err := r.routeCluster(host, name); found {
				return b, err
			}
		}
	}
	switch {
	case svc != nil:
		return backend{svc, r.gate()}, nil
	case offline:
		name, _ := r.nameOf(host)
		return nil, &httpproxy.DialError{Status: http.StatusBadGateway,
			Reason: fmt.Sprintf("%s is offline: the client exposing %q is not connected", host, name)}
	}
	reason := fmt.Sprintf("no app is exposed as %s", host)
	if r.listNames {
		names := r.names()
		slices.Sort(names)
		reason += fmt.Sprintf("; exposed here: %s", strings.Join(names, ", "))
	}
	return nil, &httpproxy.DialError{Status: http.StatusNotFound, Reason: reason}
}

// gate is serveRawTCP's gate: in a cluster, whether this node may still
// serve its own clients' names.
func (r *registry) gate() func() bool {
	if r.cluster == nil {
		return nil
	}
	return r.cluster.canServe
}

// backend adapts an exposed service to httpproxy.Backend; gate, if set,
// refuses it while this cluster node cannot prove the name is its
// client's.
type backend struct {
	svc  *quictun.Service
	gate func() bool
}

func (b backend) Name() string { return b.svc.Name }

// HostHeader implements httpproxy.HostRewriter: the value the client
// asked its app's requests to carry, if any.
func (b backend) HostHeader() string { return b.svc.HostHeader }

// AllowsSource implements httpproxy.SourceFilter: the client's
// allow-from list, if any.
func (b backend) AllowsSource(remote netip.AddrPort) bool { return b.svc.Allows(remote.Addr()) }

// BasicAuth implements httpproxy.GuardedBackend: the credentials the
// client asked the public to present, if any.
func (b backend) BasicAuth() *httpproxy.BasicAuth {
	if a := b.svc.BasicAuth; a != nil {
		return httpproxy.BasicAuthFromHashes(a.User, a.Password)
	}
	return nil
}

// Dial opens a reverse session without waiting for the client's answer
// (quictun.Service.DialEarly): the request follows ReverseOpen at once, a
// round trip sooner. A client that cannot reach its app still gets its
// 502/504: the failure comes back on the first Read of the response.
func (b backend) Dial(ctx context.Context, remote netip.AddrPort) (net.Conn, error) {
	if b.gate != nil && !b.gate() {
		return nil, refuseUnproven(b.svc.Name)
	}
	c, err := b.svc.DialEarly(ctx, remote)
	if err != nil {
		return nil, reverseDialError(b.svc.Name, err)
	}
	return earlyConn{c, b.svc.Name}, nil
}

// earlyConn is a reverse session opened with DialEarly: the errors of the
// client's answer, which its first Read, Peek or a refused Write return,
// become the *httpproxy.DialError that chooses the public client's status.
type earlyConn struct {
	*quictun.StreamConn
	name string
}

func (c earlyConn) Read(b []byte) (int, error) {
	n, err := c.StreamConn.Read(b)
	return n, c.dialError(err)
}

func (c earlyConn) Peek(b []byte) (int, error) {
	n, err := c.StreamConn.Peek(b)
	return n, c.dialError(err)
}

func (c earlyConn) Write(b []byte) (int, error) {
	n, err := c.StreamConn.Write(b)
	return n, c.dialError(err)
}

// ReportRequest implements httpproxy.RequestReporter: the client that
// exposed the app gets a record of the request for its own log.
func (c earlyConn) ReportRequest(r httpproxy.RequestRecord) {
	c.LogRequest(quictun.RequestLog{Remote: r.Client, Method: r.Method, Target: r.Target, Status: uint16(r.Status),
		Up: uint64(max(r.Up, 0)), Down: uint64(max(r.Down, 0)), Duration: r.Duration, TLS: r.TLS, Outcome: r.Outcome})
}

// dialError maps a failed answer to its DialError; other errors (the
// session failing later) pass unchanged.
func (c earlyConn) dialError(err error) error {
	var se *quictun.SessionError
	if err != nil && (errors.As(err, &se) || errors.Is(err, quictun.ErrClientOffline) || quictun.PeerShutDown(err)) {
		return reverseDialError(c.name, err)
	}
	return err
}

// reverseDialError maps a reverse-session error to what the public client
// sees: 502 the client or its app cannot be reached (with the cause), 504
// it took too long. An offline client is not named: its name (by default
// its host name) is none of the public's business.
func reverseDialError(name string, err error) error {
	status := http.StatusBadGateway
	reason := err.Error()
	var se *quictun.SessionError
	switch {
	case errors.Is(err, quictun.ErrClientOffline):
		reason = fmt.Sprintf("the client exposing %q is offline", name)
	case quictun.PeerShutDown(err):
		reason = fmt.Sprintf("the client exposing %q is going offline (shutting down)", name)
	case errors.As(err, &se) && se.Code == quictun.CodeTimeout:
		status = http.StatusGatewayTimeout
	case errors.Is(err, context.DeadlineExceeded):
		status = http.StatusGatewayTimeout
	}
	return &httpproxy.DialError{Status: status, Reason: reason, Err: err}
}

// fixedRouter sends every request to one backend: a service's dedicated
// HTTP port.
type fixedRouter struct{ b httpproxy.Backend }

func (f fixedRouter) Route(string) (httpproxy.Backend, error) { return f.b, nil }

// servePort serves a service's own public port until the listener is
// closed (service withdrawn) or ctx ends: raw TCP, or HTTP for that
// service alone, configured as public (its Router aside).
func servePort(log *slog.Logger, public httpproxy.ReverseConfig, gate func() bool) func(ctx context.Context, ln net.Listener, svc *quictun.Service) {
	raw := serveRawTCP(log, public.AccessLog, gate)
	return func(ctx context.Context, ln net.Listener, svc *quictun.Service) {
		if svc.Kind == quictun.ServiceTCP {
			raw(ctx, ln, svc)
			return
		}
		rc := public
		rc.Router = fixedRouter{backend{svc, gate}}
		rp, err := httpproxy.NewReverse(rc)
		if err != nil {
			ln.Close()
			log.Error("dedicated HTTP port not served", "service", svc.Name, "err", err)
			return
		}
		stop := context.AfterFunc(ctx, func() { ln.Close() })
		defer stop()
		rp.Serve(ln) // returns when the listener closes
		rp.Close()
	}
}

// Published reports whether host is NAME.DOMAIN with an app exposed as
// NAME right now (not one merely reserved for an offline client).
func (c *Coordinator) Published(host string) bool {
	svc, _ := c.registry.lookup(host)
	return svc != nil
}
