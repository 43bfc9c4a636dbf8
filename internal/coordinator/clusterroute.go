package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/httpproxy"
	"quictunnel/internal/relay"
	"quictunnel/quictun"
)

// The registry as a cluster node: claims go to etcd before the local
// maps; names and ports held by other nodes' clients are served by
// forwarding to those nodes (clusterlink.go).

// maxPortTries bounds the ports tried for a service that asks for any.
const maxPortTries = 32

// pendingKey names a claim in progress in registry.pending.
func pendingKey(name string, port uint16) string {
	if port != 0 {
		return "p/" + strconv.Itoa(int(port))
	}
	return "n/" + name
}

// publishClustered is Publish in a cluster: the name and the port are
// claimed in etcd first (a transaction), then published here.
func (r *registry) publishClustered(svc *quictun.Service) (quictun.Publication, error) {
	name, owner := strings.ToLower(svc.Name), ownerKey(svc.Owner)
	rec := claimRecord{Owner: owner, Node: r.cluster.cfg.NodeID, Client: svc.Client, Name: name, Kind: svc.Kind,
		HostHeader: svc.HostHeader, AllowFrom: svc.AllowFrom, BasicAuth: svc.BasicAuth}
	r.mu.Lock()
	if old, taken := r.byName[name]; taken && svc.Kind == quictun.ServiceHTTP && old.svc.Owner != svc.Owner {
		r.mu.Unlock()
		return quictun.Publication{}, fmt.Errorf("%w: name %q is already exposed by another client", quictun.ErrNameTaken, svc.Name)
	}
	if old, taken := r.byPort[svc.Port]; taken && svc.Port != 0 && old.svc.SameClient(svc) {
		r.mu.Unlock()
		return quictun.Publication{}, fmt.Errorf("%w: port %d is already used by this client's service %q: give each service a port of its own",
			quictun.ErrNameTaken, svc.Port, old.svc.Name)
	}
	if svc.Kind == quictun.ServiceHTTP {
		r.pending[pendingKey(name, 0)] = rec
	}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.pending, pendingKey(name, 0))
		r.mu.Unlock()
		r.cluster.reconcileSoon() // settles whatever a failure left claimed
	}()
	ctx, cancel := context.WithTimeout(r.ctx, 3*r.cluster.cfg.OpTimeout)
	defer cancel()
	if svc.Kind == quictun.ServiceHTTP {
		if err := r.cluster.claim(ctx, r.cluster.nameKey(name), fmt.Sprintf("name %q", svc.Name), rec); err != nil {
			return quictun.Publication{}, err
		}
	}
	pub := &publication{svc: svc}
	if svc.Kind == quictun.ServiceTCP || svc.Port != 0 {
		ln, port, err := r.claimPort(ctx, svc, name, rec)
		if err != nil {
			return quictun.Publication{}, err
		}
		pub.ln, pub.port = ln, port
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.byName[name]; ok && svc.Kind == quictun.ServiceHTTP {
		r.unpublish(old) // stale: etcd gave the name to svc
	}
	if pub.ln != nil {
		r.byPort[pub.port] = pub
		delete(r.pending, pendingKey("", pub.port))
		r.wg.Go(func() { r.servePort(r.ctx, pub.ln, svc) })
	}
	if svc.Kind == quictun.ServiceHTTP {
		r.byName[name] = pub
	}
	return r.publication(pub), nil
}

// publication says how pub is reached.
func (r *registry) publication(pub *publication) quictun.Publication {
	out := quictun.Publication{Port: pub.port}
	if pub.svc.Kind == quictun.ServiceHTTP {
		out.URL = fmt.Sprintf(r.httpURL, strings.ToLower(pub.svc.Name)+"."+r.domain)
		if pub.port != 0 {
			out.URL += " and http://" + net.JoinHostPort(r.publicHost(), strconv.Itoa(int(pub.port))) + "/"
		}
		return out
	}
	out.URL = "tcp://" + net.JoinHostPort(r.publicHost(), strconv.Itoa(int(pub.port)))
	return out
}

// claimPort claims svc's public port in etcd and binds it here: the port
// it asks for, else the one its owner had, else the first of the range
// not kept for another owner. The listener of another node's port on the
// same number (a forward) gives way.
func (r *registry) claimPort(ctx context.Context, svc *quictun.Service, name string, rec claimRecord) (net.Listener, uint16, error) {
	if r.ports == (PortRange{}) {
		return nil, 0, fmt.Errorf("%w: this coordinator publishes no ports (see --port-range)", quictun.ErrNotAllowed)
	}
	taken := func(p uint16) error {
		if old, ok := r.byPort[p]; ok && old.svc.Owner != svc.Owner {
			return fmt.Errorf("%w: port %d is already exposed by another client", quictun.ErrNameTaken, p)
		}
		return nil
	}
	try := func(p uint16) (net.Listener, error) {
		r.mu.Lock()
		if err := taken(p); err != nil {
			r.mu.Unlock()
			return nil, err
		}
		r.pending[pendingKey("", p)] = rec
		r.mu.Unlock()
		err := r.cluster.claim(ctx, r.cluster.portKey(p), fmt.Sprintf("port %d", p), rec)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err == nil {
			err = taken(p)
		}
		if err != nil {
			delete(r.pending, pendingKey("", p))
			return nil, err
		}
		if old, ok := r.byPort[p]; ok {
			r.unpublish(old) // the same owner, reconnected: its stale registration
		}
		if f := r.fwd[p]; f != nil {
			f.ln.Close()
			delete(r.fwd, p)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(r.bindHost, strconv.Itoa(int(p))))
		if err != nil {
			delete(r.pending, pendingKey("", p))
			return nil, fmt.Errorf("%w: port %d: %w", quictun.ErrNameTaken, p, err)
		}
		return ln, nil // pending until published
	}
	want := svc.Port
	if want == 0 {
		want, _ = r.cluster.portOf(rec.Owner, name)
	}
	if want != 0 {
		if !r.ports.contains(want) {
			return nil, 0, fmt.Errorf("%w: port %d is outside %d-%d", quictun.ErrNotAllowed, want, r.ports.Min, r.ports.Max)
		}
		ln, err := try(want)
		if err == nil || svc.Port != 0 || errors.Is(err, ErrRegistryUnavailable) {
			return ln, want, err
		}
	}
	tries := 0
	for p := int(r.ports.Min); p <= int(r.ports.Max) && tries < maxPortTries; p++ {
		r.mu.Lock()
		_, local := r.byPort[uint16(p)]
		r.mu.Unlock()
		if local || r.cluster.portReserved(uint16(p), rec.Owner) {
			continue
		}
		tries++
		ln, err := try(uint16(p))
		if err == nil {
			return ln, uint16(p), nil
		}
		if errors.Is(err, ErrRegistryUnavailable) {
			return nil, 0, err
		}
	}
	return nil, 0, fmt.Errorf("%w: no free port left in %d-%d", quictun.ErrNameTaken, r.ports.Min, r.ports.Max)
}

// localClaims implements localView.
func (r *registry) localClaims() (map[string]claimRecord, map[uint16]claimRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	names, ports := map[string]claimRecord{}, map[uint16]claimRecord{}
	for k, rec := range r.pending {
		rec.claiming = true
		if p, ok := strings.CutPrefix(k, "p/"); ok {
			n, _ := strconv.Atoi(p)
			ports[uint16(n)] = rec
		} else {
			names[strings.TrimPrefix(k, "n/")] = rec
		}
	}
	for name, p := range r.byName {
		names[name] = r.recordOf(p.svc)
	}
	for port, p := range r.byPort {
		ports[port] = r.recordOf(p.svc)
	}
	return names, ports
}

func (r *registry) recordOf(svc *quictun.Service) claimRecord {
	return claimRecord{Owner: ownerKey(svc.Owner), Node: r.cluster.cfg.NodeID, Client: svc.Client, Name: strings.ToLower(svc.Name),
		Kind: svc.Kind, HostHeader: svc.HostHeader, AllowFrom: svc.AllowFrom, BasicAuth: svc.BasicAuth}
}

// lost implements localView: the name (port 0) or port is withdrawn here;
// when another owner has it now, the client is disconnected with the
// reason (it reconnects and registers again, and is refused that one).
func (r *registry) lost(name string, port uint16, tell bool) {
	r.mu.Lock()
	p := r.byName[name]
	if port != 0 {
		p = r.byPort[port]
	}
	if p != nil {
		r.unpublish(p)
	}
	r.mu.Unlock()
	if p != nil && tell {
		what := fmt.Sprintf("name %q", p.svc.Name)
		if port != 0 {
			what = fmt.Sprintf("port %d", port)
		}
		p.svc.Disconnect(quictun.CodeNameTaken, what+" was given to another client while this coordinator was cut off from the cluster registry")
	}
}

// forwarder is a public port this node listens on for another node's
// client.
type forwarder struct {
	ln   net.Listener
	kind quictun.ServiceKind
}

// viewChanged implements localView: listen on every port other nodes'
// clients hold (not on those this node's clients hold or claim), stop
// listening on the others.
func (r *registry) viewChanged() {
	r.link.prune(r.cluster.nodeAddrs())
	if r.ports == (PortRange{}) {
		return
	}
	want := r.cluster.remotePorts()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx.Err() != nil {
		return
	}
	for p, f := range r.fwd {
		if rec, ok := want[p]; !ok || rec.Kind != f.kind {
			f.ln.Close()
			delete(r.fwd, p)
		}
	}
	for p, rec := range want {
		_, local := r.byPort[p]
		_, claiming := r.pending[pendingKey("", p)]
		if local || claiming || r.fwd[p] != nil {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(r.bindHost, strconv.Itoa(int(p))))
		if err != nil {
			r.log.Warn("cannot listen on another node's public port", "port", p, "service", rec.Name, "err", err)
			continue
		}
		r.fwd[p] = &forwarder{ln: ln, kind: rec.Kind}
		r.wg.Go(func() { r.serveForwardedPort(r.ctx, ln, p, rec.Kind) })
	}
}

// serveForwardedPort serves a port another node's client holds: raw TCP
// forwarded as it is, HTTP through a reverse proxy whose backend is the
// other node.
func (r *registry) serveForwardedPort(ctx context.Context, ln net.Listener, port uint16, kind quictun.ServiceKind) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	if kind == quictun.ServiceHTTP {
		rc := r.publicConfig
		rc.Router = portRouter{r, port}
		rp, err := httpproxy.NewReverse(rc)
		if err != nil {
			ln.Close()
			return
		}
		rp.Serve(ln)
		rp.Close()
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() { r.forwardTCP(ctx, c, port) })
	}
}

// portRouter routes a forwarded HTTP port to its node.
type portRouter struct {
	r    *registry
	port uint16
}

func (p portRouter) Route(string) (httpproxy.Backend, error) {
	rec, node, _, ok := p.r.cluster.route("", p.port)
	if !ok {
		return nil, &httpproxy.DialError{Status: http.StatusBadGateway, Reason: fmt.Sprintf("port %d is offline", p.port)}
	}
	return remoteBackend{p.r, rec, node, forwardHeader{port: p.port}}, nil
}

// forwardTCP relays one public TCP connection to the node whose client
// holds port.
func (r *registry) forwardTCP(ctx context.Context, c net.Conn, port uint16) {
	defer c.Close()
	start := time.Now()
	remote := addrPortOf(c.RemoteAddr())
	attrs := []any{"kind", "tcp", "client_addr", remote, "port", port, "via", "cluster"}
	rec, node, _, ok := r.cluster.route("", port)
	if !ok || !rec.allows(remote.Addr()) {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		r.accessLog.Info("public connection", append(attrs, "outcome", "unavailable")...)
		return
	}
	b := remoteBackend{r, rec, node, forwardHeader{port: port}}
	up, err := b.Dial(ctx, remote)
	if err == nil {
		_, err = up.(*remoteConn).answer()
	}
	if err != nil {
		r.accessLog.Info("public connection", append(attrs, "service", rec.Name, "node", node.ID, "outcome", "unavailable", "err", err)...)
		return
	}
	st, err := relay.Splice(ctx, c, up)
	attrs = append(attrs, "service", rec.Name, "node", node.ID, "bytes_in", st.AToB, "bytes_out", st.BToA,
		"duration", time.Since(start).Round(time.Microsecond), "outcome", quictun.Outcome(err))
	r.accessLog.Info("public connection", attrs...)
}

// allows is Service.Allows for a record.
func (rec *claimRecord) allows(addr netip.Addr) bool {
	return (&quictun.Service{AllowFrom: rec.AllowFrom}).Allows(addr)
}

// routeCluster routes a name no client of this node holds: to the node
// whose client holds it.
func (r *registry) routeCluster(host, name string) (httpproxy.Backend, bool, error) {
	rec, node, offline, ok := r.cluster.route(name, 0)
	switch {
	case ok && node.ID != r.cluster.cfg.NodeID:
		return remoteBackend{r, rec, node, forwardHeader{name: name}}, true, nil
	case ok || offline:
		return nil, true, &httpproxy.DialError{Status: http.StatusBadGateway,
			Reason: fmt.Sprintf("%s is offline: the client exposing %q is not connected", host, name)}
	}
	return nil, false, nil
}

// refuseUnproven is the public's answer when this node's lease may have
// ended long enough ago for the name to be someone else's.
func refuseUnproven(name string) error {
	return &httpproxy.DialError{Status: http.StatusServiceUnavailable,
		Reason: fmt.Sprintf("%v: this coordinator cannot confirm that %q is still its client's", ErrRegistryUnavailable, name)}
}

// remoteBackend is a name or port another node's client holds.
type remoteBackend struct {
	r    *registry
	rec  claimRecord
	node nodeRecord
	hdr  forwardHeader
}

func (b remoteBackend) Name() string       { return b.rec.Name }
func (b remoteBackend) HostHeader() string { return b.rec.HostHeader }
func (b remoteBackend) AllowsSource(remote netip.AddrPort) bool {
	return b.rec.allows(remote.Addr())
}

func (b remoteBackend) BasicAuth() *httpproxy.BasicAuth {
	if a := b.rec.BasicAuth; a != nil {
		return httpproxy.BasicAuthFromHashes(a.User, a.Password)
	}
	return nil
}

// Dial opens a forward stream to the node and sends the header; the
// node's answer is read with the first Read (remoteConn), so the request
// follows at once.
func (b remoteBackend) Dial(ctx context.Context, remote netip.AddrPort) (net.Conn, error) {
	str, err := b.r.link.open(ctx, b.node.Addr)
	if err != nil {
		return nil, &httpproxy.DialError{Status: http.StatusBadGateway,
			Reason: fmt.Sprintf("the coordinator serving %q cannot be reached", b.rec.Name), Err: err}
	}
	h := b.hdr
	h.remote = remote
	if _, err := str.Write(appendForwardHeader(nil, h)); err != nil {
		str.CancelWrite(quic.StreamErrorCode(quictun.CodeCanceled))
		str.CancelRead(quic.StreamErrorCode(quictun.CodeCanceled))
		return nil, &httpproxy.DialError{Status: http.StatusBadGateway, Reason: "forward to another coordinator failed", Err: err}
	}
	return &remoteConn{streamConn: streamConn{Stream: str, local: b.r.link.Addr(), remote: &net.UDPAddr{}}}, nil
}

// remoteConn is a forward stream whose first Read (or failed Write)
// takes the owner node's answer: a refusal becomes the DialError that
// picks the public's status.
type remoteConn struct {
	streamConn
	once sync.Once
	err  error
}

func (c *remoteConn) answer() (int, error) {
	c.once.Do(func() {
		c.Stream.SetReadDeadline(time.Now().Add(clusterAnswerTimeout))
		status, reason, err := readForwardAnswer(c.Stream)
		c.Stream.SetReadDeadline(time.Time{})
		switch {
		case err != nil:
			c.err = &httpproxy.DialError{Status: http.StatusBadGateway, Reason: "the coordinator serving it did not answer", Err: err}
		case status != 0:
			c.err = &httpproxy.DialError{Status: status, Reason: reason}
		}
	})
	return 0, c.err
}

func (c *remoteConn) Read(b []byte) (int, error) {
	if _, err := c.answer(); err != nil {
		return 0, err
	}
	return c.Stream.Read(b)
}

func (c *remoteConn) Write(b []byte) (int, error) {
	n, err := c.Stream.Write(b)
	var se *quic.StreamError
	if err != nil && errors.As(err, &se) && se.Remote {
		if _, aerr := c.answer(); aerr != nil {
			return n, aerr
		}
	}
	return n, err
}

// serveForward is the owner node's side of a forward stream: it finds the
// service here, opens the session to its client and relays.
func (r *registry) serveForward(ctx context.Context, str *quic.Stream, from net.Addr) {
	conn := &streamConn{Stream: str, local: r.link.Addr(), remote: from}
	str.SetReadDeadline(time.Now().Add(clusterAuthTimeout))
	h, err := readForwardHeader(str)
	str.SetReadDeadline(time.Time{})
	if err != nil {
		str.CancelRead(quic.StreamErrorCode(quictun.CodeProtocol))
		conn.Close()
		return
	}
	if h.http && r.sniff != nil {
		// A whole public connection: served as one of ours.
		writeForwardAnswer(str, 0, "")
		r.sniff.inject(&handedConn{conn, tcpAddrOf(h.remote)})
		return
	}
	defer conn.Close()
	start := time.Now()
	attrs := []any{"client_addr", h.remote, "via", from}
	r.mu.Lock()
	var p *publication
	if h.port != 0 {
		p = r.byPort[h.port]
		attrs = append(attrs, "port", h.port)
	} else {
		p = r.byName[h.name]
	}
	r.mu.Unlock()
	name := h.name
	if p != nil {
		name = p.svc.Name
	}
	attrs = append(attrs, "service", name, "kind", "cluster")
	refuse := func(status int, reason string, err error) {
		writeForwardAnswer(str, status, reason)
		r.accessLog.Info("forwarded connection", append(attrs, "outcome", "unavailable", "status", status, "err", err)...)
	}
	switch {
	case p == nil:
		refuse(http.StatusBadGateway, fmt.Sprintf("the client exposing %q is offline", name), quictun.ErrClientOffline)
		return
	case !r.cluster.canServe():
		refuse(http.StatusServiceUnavailable, refuseUnproven(name).Error(), ErrRegistryUnavailable)
		return
	case !p.svc.Allows(h.remote.Addr()):
		refuse(http.StatusForbidden, "not in the service's allow-from list", nil)
		return
	}
	app, err := p.svc.Dial(ctx, h.remote)
	if err != nil {
		var de *httpproxy.DialError
		errors.As(reverseDialError(name, err), &de)
		refuse(de.Status, de.Reason, err)
		return
	}
	if err := writeForwardAnswer(str, 0, ""); err != nil {
		app.Reset()
		return
	}
	st, err := relay.Splice(ctx, conn, app)
	attrs = append(attrs, "session", app.SessionID(), "bytes_in", st.AToB, "bytes_out", st.BToA,
		"duration", time.Since(start).Round(time.Microsecond), "outcome", quictun.Outcome(err))
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	r.accessLog.Info("forwarded connection", attrs...)
}
