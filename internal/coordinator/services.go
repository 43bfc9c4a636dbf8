package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"quictunnel/httpproxy"
	"quictunnel/internal/relay"
	"quictunnel/quictun"
)

// PortRange is an inclusive range of public TCP ports.
type PortRange struct{ Min, Max uint16 }

// ParsePortRange parses "20000-20100".
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	a, err1 := strconv.ParseUint(lo, 10, 16)
	b, err2 := strconv.ParseUint(hi, 10, 16)
	if !ok || err1 != nil || err2 != nil || a == 0 || a > b {
		return PortRange{}, fmt.Errorf("port range %q: want MIN-MAX, 1 <= MIN <= MAX <= 65535", s)
	}
	return PortRange{uint16(a), uint16(b)}, nil
}

func (r PortRange) contains(p uint16) bool { return r.Min <= p && p <= r.Max }

// registry publishes the services clients expose: HTTP services by name
// (NAME.DOMAIN on the shared HTTP port) and on dedicated ports; TCP
// services on ports of their own. It implements quictun.ServiceRegistry.
type registry struct {
	domain    string    // public names are NAME.domain
	httpURL   string    // URL template, %s is the host name
	bindHost  string    // where dedicated ports listen
	ports     PortRange // ports clients may have; zero: none
	listNames bool      // say which names exist on a 404
	// servePort serves a published port until its listener closes.
	servePort func(ctx context.Context, ln net.Listener, svc *quictun.Service)
	log       *slog.Logger

	ctx context.Context // ends every published listener
	wg  sync.WaitGroup

	// grace is how long names and ports stay reserved for an owner that
	// went offline (see names.go); statePath, if set, is where they are
	// kept across restarts, written by saveState when dirty says so.
	grace     time.Duration
	statePath string
	dirty     chan struct{}

	// In a cluster (see cluster.go): the node, the link to the other
	// nodes, the claims in progress (by pendingKey), the ports this node
	// listens on for other nodes' clients, and what those ports serve.
	cluster      *clusterNode
	link         *clusterLink
	sniff        *sniffListener // the public HTTP port, when there is one
	pending      map[string]claimRecord
	fwd          map[uint16]*forwarder
	publicConfig httpproxy.ReverseConfig
	accessLog    *slog.Logger

	mu        sync.Mutex
	byName    map[string]*publication // HTTP services, by lower-case name
	byPort    map[uint16]*publication
	holds     map[string]*hold // every name published, online or kept for its owner
	portHolds map[uint16]*hold // every port published, likewise
}

type publication struct {
	svc  *quictun.Service
	port uint16
	ln   net.Listener // dedicated port, if any
}

// Publish implements quictun.ServiceRegistry.
func (r *registry) Publish(svc *quictun.Service) (quictun.Publication, error) {
	if r.cluster != nil {
		return r.publishClustered(svc)
	}
	name := strings.ToLower(svc.Name)
	owner, now := ownerKey(svc.Owner), time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if svc.Kind == quictun.ServiceHTTP {
		if old, taken := r.byName[name]; taken {
			if old.svc.Owner != svc.Owner {
				return quictun.Publication{}, fmt.Errorf("%w: name %q is already exposed by another client", quictun.ErrNameTaken, svc.Name)
			}
			r.unpublish(old) // the same client, reconnected: replace its stale registration
		} else if h := r.holds[name]; h.reservedFor(owner, now, r.grace) {
			return quictun.Publication{}, fmt.Errorf("%w: name %q belongs to a client that is offline: it is kept for it until %s (--name-grace %s)",
				quictun.ErrNameTaken, svc.Name, h.Left.Add(r.grace).UTC().Format(time.RFC3339), r.grace)
		}
	}
	want, err := r.portFor(svc, name, owner, now)
	if err != nil {
		return quictun.Publication{}, err
	}
	pub := &publication{svc: svc}
	if svc.Kind == quictun.ServiceTCP || svc.Port != 0 {
		ln, port, err := r.listenPort(want, owner, now)
		if err != nil && want != svc.Port { // the port it had is gone: any other
			ln, port, err = r.listenPort(0, owner, now)
		}
		if err != nil {
			return quictun.Publication{}, err
		}
		pub.ln, pub.port = ln, port
		r.byPort[port] = pub
		r.portHolds[port] = &hold{Owner: owner, Name: name}
		r.wg.Go(func() { r.servePort(r.ctx, ln, svc) })
	}
	var out quictun.Publication
	out.Port = pub.port
	if svc.Kind == quictun.ServiceHTTP {
		r.byName[name] = pub
		r.holds[name] = &hold{Owner: owner}
		out.URL = fmt.Sprintf(r.httpURL, name+"."+r.domain)
		if pub.port != 0 {
			out.URL += " and http://" + net.JoinHostPort(r.publicHost(), strconv.Itoa(int(pub.port))) + "/"
		}
	} else {
		out.URL = "tcp://" + net.JoinHostPort(r.publicHost(), strconv.Itoa(int(pub.port)))
	}
	r.changedLocked(now)
	return out, nil
}

// portFor chooses the public port svc asks for: its Port, or for a TCP
// service that asks for any, the one its owner had for it; 0 for any.
// The same owner's stale registration of that port (a reconnect) is
// withdrawn; a port another service of the same connection has, or one
// kept for an offline owner, is refused. r.mu is held.
func (r *registry) portFor(svc *quictun.Service, name, owner string, now time.Time) (uint16, error) {
	if svc.Port != 0 {
		if old, taken := r.byPort[svc.Port]; taken {
			switch {
			case old.svc.SameClient(svc):
				return 0, fmt.Errorf("%w: port %d is already used by this client's service %q: give each service a port of its own",
					quictun.ErrNameTaken, svc.Port, old.svc.Name)
			case old.svc.Owner == svc.Owner:
				r.unpublish(old)
			}
		} else if h := r.portHolds[svc.Port]; h.reservedFor(owner, now, r.grace) {
			return 0, fmt.Errorf("%w: port %d belongs to a client that is offline: it is kept for it until %s (--name-grace %s)",
				quictun.ErrNameTaken, svc.Port, h.Left.Add(r.grace).UTC().Format(time.RFC3339), r.grace)
		}
		return svc.Port, nil
	}
	if svc.Kind != quictun.ServiceTCP {
		return 0, nil
	}
	for port, h := range r.portHolds {
		if h.Owner != owner || h.Name != name {
			continue
		}
		if old, taken := r.byPort[port]; taken {
			if old.svc.SameClient(svc) || old.svc.Owner != svc.Owner {
				continue
			}
			r.unpublish(old) // the same client, reconnected
		}
		return port, nil
	}
	return 0, nil
}

// Withdraw implements quictun.ServiceRegistry. The service's name and
// port stay reserved for its owner for r.grace.
func (r *registry) Withdraw(svc *quictun.Service) {
	name := strings.ToLower(svc.Name)
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.byName[name]; ok && p.svc == svc {
		r.unpublish(p)
	}
	for _, p := range r.byPort {
		if p.svc == svc {
			r.unpublish(p)
		}
	}
	r.changedLocked(time.Now())
	if r.cluster != nil {
		r.cluster.reconcileSoon() // marks them offline in etcd
	}
}

// unpublish removes p from the maps and closes its port; its name and
// port stay held for its owner, who is offline from now on unless it
// publishes them again. r.mu is held.
func (r *registry) unpublish(p *publication) {
	name := strings.ToLower(p.svc.Name)
	owner, now := ownerKey(p.svc.Owner), time.Now()
	if r.byName[name] == p {
		delete(r.byName, name)
		if h := r.holds[name]; h != nil && h.Owner == owner {
			h.Left = now
		}
	}
	if p.ln != nil {
		p.ln.Close()
		delete(r.byPort, p.port)
		if h := r.portHolds[p.port]; h != nil && h.Owner == owner {
			h.Left = now
		}
	}
}

// lookup finds the HTTP service for a Host header value. offline reports
// that the name belonged to a client that left recently.
func (r *registry) lookup(host string) (svc *quictun.Service, offline bool) {
	name, ok := r.nameOf(host)
	if !ok {
		return nil, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.byName[name]; ok {
		return p.svc, false
	}
	return nil, r.holds[name].offline(time.Now(), r.grace)
}

// nameOf extracts NAME from "NAME.DOMAIN[:port]".
func (r *registry) nameOf(host string) (string, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	name, ok := strings.CutSuffix(host, "."+r.domain)
	if !ok || name == "" || strings.Contains(name, ".") {
		return "", false
	}
	return name, true
}

// names lists the published HTTP names, for the not-found page.
func (r *registry) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.byName))
	for n := range r.byName {
		out = append(out, n)
	}
	return out
}

// listenPort binds a public port: want, or the first free one of the
// range when want is 0 (skipping those kept for other owners).
func (r *registry) listenPort(want uint16, owner string, now time.Time) (net.Listener, uint16, error) {
	if r.ports == (PortRange{}) {
		return nil, 0, fmt.Errorf("%w: this coordinator publishes no ports (see --port-range)", quictun.ErrNotAllowed)
	}
	if want != 0 {
		if !r.ports.contains(want) {
			return nil, 0, fmt.Errorf("%w: port %d is outside %d-%d", quictun.ErrNotAllowed, want, r.ports.Min, r.ports.Max)
		}
		if _, taken := r.byPort[want]; taken {
			return nil, 0, fmt.Errorf("%w: port %d is already exposed by another client", quictun.ErrNameTaken, want)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(r.bindHost, strconv.Itoa(int(want))))
		if err != nil {
			return nil, 0, fmt.Errorf("%w: port %d: %w", quictun.ErrNameTaken, want, err)
		}
		return ln, want, nil
	}
	for p := int(r.ports.Min); p <= int(r.ports.Max); p++ {
		if _, taken := r.byPort[uint16(p)]; taken || r.portHolds[uint16(p)].reservedFor(owner, now, r.grace) {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(r.bindHost, strconv.Itoa(p)))
		if err == nil {
			return ln, uint16(p), nil
		}
	}
	return nil, 0, fmt.Errorf("%w: no free port left in %d-%d", quictun.ErrNameTaken, r.ports.Min, r.ports.Max)
}

func (r *registry) publicHost() string {
	if r.bindHost == "" || r.bindHost == "0.0.0.0" || r.bindHost == "::" {
		return r.domain
	}
	return r.bindHost
}

// close stops every published listener and waits for their connections.
func (r *registry) close() {
	r.mu.Lock()
	for _, p := range r.byPort {
		p.ln.Close()
	}
	r.mu.Unlock()
	if r.sniff != nil {
		r.sniff.Close()
		r.sniff.wait()
	}
	r.wg.Wait()
}

// serveRawTCP relays every connection accepted on ln to svc, until ln is
// closed or ctx ends.
// In a cluster, gate says whether this node may still serve its clients'
// names and ports (clusterNode.canServe); nil: always.
func serveRawTCP(log, accessLog *slog.Logger, gate func() bool) func(ctx context.Context, ln net.Listener, svc *quictun.Service) {
	return func(ctx context.Context, ln net.Listener, svc *quictun.Service) {
		var wg sync.WaitGroup
		defer wg.Wait()
		stop := context.AfterFunc(ctx, func() { ln.Close() })
		defer stop()
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					log.Warn("public port stopped accepting", "service", svc.Name, "err", err)
				}
				return
			}
			if gate != nil && !gate() {
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
				accessLog.Info("public connection", "service", svc.Name, "kind", "tcp", "client_addr", addrPortOf(c.RemoteAddr()),
					"outcome", "unavailable", "err", ErrRegistryUnavailable)
				continue
			}
			wg.Go(func() { relayTCP(ctx, c, svc, accessLog) })
		}
	}
}

// relayTCP connects one public TCP connection to svc. The client's first
// bytes go right behind the session's opening (DialEarly): a client that
// speaks first (a TLS ClientHello) reaches the app a round trip sooner.
// When the app cannot be reached the connection is reset.
func relayTCP(ctx context.Context, c net.Conn, svc *quictun.Service, accessLog *slog.Logger) {
	start := time.Now()
	remote := addrPortOf(c.RemoteAddr())
	attrs := []any{"service", svc.Name, "kind", "tcp", "client_addr", remote, "port", c.LocalAddr().(*net.TCPAddr).Port}
	if !svc.Allows(remote.Addr()) {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset: refused, not ended
		}
		c.Close()
		accessLog.Info("public connection", append(attrs, "outcome", "forbidden", "err", "not in the service's allow-from list")...)
		return
	}
	stream, err := svc.DialEarly(ctx, remote)
	if err != nil {
		c.Close()
		accessLog.Info("public connection", append(attrs, "outcome", "unavailable", "err", err, "duration", time.Since(start).Round(time.Microsecond))...)
		return
	}
	st, err := relay.Splice(ctx, c, stream)
	outcome := quictun.Outcome(err)
	var se *quictun.SessionError
	if errors.As(err, &se) || errors.Is(err, quictun.ErrClientOffline) {
		outcome = "unavailable" // the client's answer: no app, or no client
	}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	accessLog.Info("public connection", append(attrs, "session", stream.SessionID(), "bytes_in", st.AToB, "bytes_out", st.BToA,
		"duration", time.Since(start).Round(time.Microsecond), "outcome", outcome)...)
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
