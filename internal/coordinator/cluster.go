package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"quictunnel/internal/metrics"
	"quictunnel/quictun"
)

// A cluster is several coordinators sharing one registry in etcd (see
// docs/design.md, "Cluster"). Each node keeps a lease, renewed every
// LeaseTTL/3, and its record under nodes/ with it. Names and ports are
// records under names/ and ports/, not tied to any lease: each says which
// owner (ownerKey) holds it, on which node, and since when it is offline
// (Left). Claims are transactions comparing the key's revision, so two
// nodes never give one name to two owners. A node whose lease ends
// (crash, partition) leaves its records online; the other nodes, seeing
// its nodes/ key go, mark them offline (Left = now) and the grace period
// runs from there. Every node watches the prefix and routes from that
// cache.
//
// Safety when cut off from etcd: a node may keep serving its names only
// while no other owner can have claimed them. Another owner may claim a
// name once it has been offline for the grace period, and it is marked
// offline only after the node's lease expired, which is no earlier than
// LeaseTTL after the last renewal the node sent. So the node serves its
// own names until renewal sent + LeaseTTL + grace (canServe), then answers
// 503 until it is back in touch. Clocks must agree to within the grace
// period's margin: Left is wall time written by one node and read by
// another.

// ClusterConfig makes a coordinator one node of a cluster. Zero Endpoints:
// no cluster (the registry is in memory).
type ClusterConfig struct {
	// Endpoints are etcd's client URLs.
	Endpoints []string
	// NodeID names this node; unique in the cluster. Default: the host
	// name.
	NodeID string
	// Listen is the UDP address of inter-node QUIC, where the other nodes
	// forward public connections for this node's clients. Required.
	Listen string
	// Advertise is the host:port the other nodes reach Listen at.
	// Default: Listen, when it names a host.
	Advertise string
	// Token is the secret every node of the cluster shares; inter-node
	// connections prove it both ways. Required.
	Token string
	// LeaseTTL is the node's etcd lease: how long after its last renewal
	// a node that stopped is taken for gone. Default DefaultClusterLease.
	LeaseTTL time.Duration
	// Prefix is where the cluster's keys live in etcd. Default
	// DefaultClusterPrefix.
	Prefix string
	// OpTimeout bounds each etcd request. Default 3s.
	OpTimeout time.Duration
}

// Cluster defaults.
const (
	DefaultClusterLease  = 10 * time.Second
	DefaultClusterPrefix = "/quictunnel/"
)

// enabled reports whether cfg makes a cluster.
func (cfg *ClusterConfig) enabled() bool { return len(cfg.Endpoints) > 0 }

// validate fills the defaults and checks cfg.
func (cfg *ClusterConfig) validate() error {
	if cfg.NodeID == "" {
		h, err := os.Hostname()
		if err != nil {
			return &ConfigError{"Cluster.NodeID", fmt.Sprintf("no host name to default to: %v", err)}
		}
		cfg.NodeID = h
	}
	if strings.ContainsAny(cfg.NodeID, "/ ") {
		return &ConfigError{"Cluster.NodeID", fmt.Sprintf("%q: no slash or space", cfg.NodeID)}
	}
	if cfg.Token == "" {
		return &ConfigError{"Cluster.Token", "required: the secret every node of the cluster shares"}
	}
	if cfg.Listen == "" {
		return &ConfigError{"Cluster.Listen", "required: the UDP address other nodes forward public connections to"}
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultClusterLease
	}
	if cfg.LeaseTTL < 2*time.Second {
		return &ConfigError{"Cluster.LeaseTTL", fmt.Sprintf("%s: at least 2s", cfg.LeaseTTL)}
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultClusterPrefix
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = 3 * time.Second
	}
	return nil
}

// advertise is the address other nodes reach this one at, given the bound
// inter-node socket.
func (cfg *ClusterConfig) advertise(bound net.Addr) (string, error) {
	if cfg.Advertise != "" {
		return cfg.Advertise, nil
	}
	ap := bound.(*net.UDPAddr).AddrPort()
	if ap.Addr().IsUnspecified() {
		return "", &ConfigError{"Cluster.Advertise", fmt.Sprintf("required when Listen (%s) names no host", cfg.Listen)}
	}
	return ap.String(), nil
}

// claimRecord is a name's or a port's record in etcd.
type claimRecord struct {
	Owner  string              `json:"owner"` // ownerKey
	Node   string              `json:"node"`
	Client string              `json:"client,omitempty"`
	Name   string              `json:"name"` // the service's name
	Kind   quictun.ServiceKind `json:"kind"`
	// What the other nodes need to serve the public in the client's stead.
	HostHeader string            `json:"host_header,omitempty"`
	AllowFrom  []netip.Prefix    `json:"allow_from,omitempty"`
	BasicAuth  *quictun.AuthHash `json:"basic_auth,omitempty"`
	// Left is when the owner went offline; zero while it is online.
	Left time.Time `json:"left,omitzero"`
	// claiming marks, in localClaims, a claim in progress (not kept).
	claiming bool
}

// reservedFor reports whether rec keeps its name or port from owner at
// now: another owner's, online (even on a node whose lease just ended and
// whose records are not yet marked) or offline within grace.
func (rec *claimRecord) reservedFor(owner string, now time.Time, grace time.Duration) bool {
	return rec.Owner != owner && (rec.Left.IsZero() || now.Sub(rec.Left) < grace)
}

// nodeRecord is a node's record, kept with its lease.
type nodeRecord struct {
	ID      string    `json:"id"`
	Addr    string    `json:"addr"` // inter-node QUIC
	Started time.Time `json:"started"`
}

// cached is a record with the revision a transaction compares.
type cached struct {
	rec    claimRecord
	modRev int64
}

// clusterView is what a node keeps of the registry: the watch's cache.
type clusterView struct {
	nodes map[string]nodeRecord
	names map[string]cached
	ports map[uint16]cached
}

// localView is the registry's side of the node: what its own clients
// publish, and what it does when the cluster takes something back.
type localView interface {
	// localClaims lists the names and ports this node's clients publish
	// now, or are claiming.
	localClaims() (names map[string]claimRecord, ports map[uint16]claimRecord)
	// lost withdraws a name (port 0) or port another node holds now;
	// tell says it went to another owner, whose client is told.
	lost(name string, port uint16, tell bool)
	// viewChanged follows the cache (the public ports of other nodes).
	viewChanged()
}

// clusterNode is this coordinator's membership of the cluster.
type clusterNode struct {
	cfg   ClusterConfig
	addr  string // advertised inter-node address
	grace time.Duration
	log   *slog.Logger
	etcd  *clientv3.Client
	local localView
	kick  chan struct{} // reconcile soon

	mu        sync.Mutex
	view      clusterView
	loaded    bool  // view holds a full read
	viewRev   int64 // the etcd revision the view is at
	wroteRev  int64 // the revision of this node's last write
	lease     clientv3.LeaseID
	renewedAt time.Time     // when the last successful renewal (or grant) was sent
	healthy   bool          // the lease is current and etcd answers
	lastErr   error         // why not healthy
	stats     clusterCounts // for metrics
}

// clusterCounts counts the node's etcd traffic.
type clusterCounts struct {
	Claims, ClaimsRefused, Writes, Renewals, Unavailable uint64
}

// newClusterNode connects to etcd; nothing is sent before run.
func newClusterNode(cfg ClusterConfig, addr string, grace time.Duration, log *slog.Logger, local localView) (*clusterNode, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.OpTimeout,
		DialKeepAliveTime:    cfg.LeaseTTL / 3,
		DialKeepAliveTimeout: cfg.OpTimeout,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("cluster registry %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return &clusterNode{cfg: cfg, addr: addr, grace: grace, log: log.With("component", "cluster", "node", cfg.NodeID),
		etcd: cli, local: local, kick: make(chan struct{}, 1),
		view:    clusterView{nodes: map[string]nodeRecord{}, names: map[string]cached{}, ports: map[uint16]cached{}},
		lastErr: errors.New("not yet registered")}, nil
}

func (n *clusterNode) nodeKey(id string) string   { return n.cfg.Prefix + "nodes/" + id }
func (n *clusterNode) nameKey(name string) string { return n.cfg.Prefix + "names/" + name }
func (n *clusterNode) portKey(p uint16) string    { return n.cfg.Prefix + "ports/" + strconv.Itoa(int(p)) }

// run keeps the node registered, the view current and the records true
// until ctx ends; then it gives its lease back so that the others mark its
// clients offline at once.
func (n *clusterNode) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { n.watch(ctx) })
	wg.Go(func() { n.reconcileLoop(ctx) })
	for ctx.Err() == nil {
		err := n.session(ctx)
		if ctx.Err() != nil {
			break
		}
		n.setHealthy(false, err)
		n.log.Warn("cluster registry unavailable: keeping the names held, refusing new ones", "err", err)
		sleepCtx(ctx, time.Second)
	}
	wg.Wait()
	n.mu.Lock()
	lease := n.lease
	n.mu.Unlock()
	if lease != 0 {
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		n.etcd.Revoke(rctx, lease)
		cancel()
	}
	n.etcd.Close()
}

// session grants a lease, registers the node with it and renews it every
// LeaseTTL/3 until a renewal fails or ctx ends.
func (n *clusterNode) session(ctx context.Context) error {
	sent := time.Now()
	gctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	lease, err := n.etcd.Grant(gctx, int64((n.cfg.LeaseTTL+time.Second-1)/time.Second))
	cancel()
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	b, _ := json.Marshal(nodeRecord{ID: n.cfg.NodeID, Addr: n.addr, Started: time.Now().UTC()})
	gctx, cancel = context.WithTimeout(ctx, n.cfg.OpTimeout)
	_, err = n.etcd.Put(gctx, n.nodeKey(n.cfg.NodeID), string(b), clientv3.WithLease(lease.ID))
	cancel()
	if err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	n.mu.Lock()
	n.lease, n.renewedAt = lease.ID, sent
	n.stats.Writes++
	n.mu.Unlock()
	n.setHealthy(true, nil)
	n.log.Info("node registered in the cluster registry", "lease_ttl", n.cfg.LeaseTTL, "addr", n.addr)
	n.reconcileSoon()
	t := time.NewTicker(n.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		sent := time.Now()
		kctx, cancel := context.WithTimeout(ctx, n.cfg.LeaseTTL/3)
		_, err := n.etcd.KeepAliveOnce(kctx, lease.ID)
		cancel()
		if err != nil {
			return fmt.Errorf("renew lease: %w", err)
		}
		n.mu.Lock()
		n.renewedAt = sent
		n.stats.Renewals++
		n.mu.Unlock()
	}
}

func (n *clusterNode) setHealthy(ok bool, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.healthy, n.lastErr = ok, err
}

// available returns nil when new claims may be made, else why not
// (wrapping ErrRegistryUnavailable).
func (n *clusterNode) available() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.healthy && time.Since(n.renewedAt) < n.cfg.LeaseTTL {
		return nil
	}
	n.stats.Unavailable++
	return fmt.Errorf("%w: %w", ErrRegistryUnavailable, n.lastErr)
}

// canServe reports whether this node may still serve its own clients'
// names: no other owner can have claimed them yet (see the package
// comment above).
func (n *clusterNode) canServe() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.renewedAt.IsZero() && time.Since(n.renewedAt) < n.cfg.LeaseTTL+n.grace
}

// watch keeps the view: a full read, then the changes from its revision
// on; again after any failure.
func (n *clusterNode) watch(ctx context.Context) {
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		resp, err := n.etcd.Get(gctx, n.cfg.Prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		view := clusterView{nodes: map[string]nodeRecord{}, names: map[string]cached{}, ports: map[uint16]cached{}}
		for _, kv := range resp.Kvs {
			n.apply(&view, string(kv.Key), kv.Value, kv.ModRevision, false)
		}
		n.mu.Lock()
		n.view, n.loaded, n.viewRev = view, true, resp.Header.Revision
		n.mu.Unlock()
		n.changed()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range n.etcd.Watch(wctx, n.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil {
				break
			}
			n.mu.Lock()
			for _, ev := range wr.Events {
				n.apply(&n.view, string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision, ev.Type == clientv3.EventTypeDelete)
			}
			n.viewRev = max(n.viewRev, wr.Header.Revision)
			n.mu.Unlock()
			n.changed()
		}
		cancel()
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// apply puts one key's value (or its deletion) into v.
func (n *clusterNode) apply(v *clusterView, key string, val []byte, rev int64, deleted bool) {
	rest, ok := strings.CutPrefix(key, n.cfg.Prefix)
	if !ok {
		return
	}
	kind, id, _ := strings.Cut(rest, "/")
	switch kind {
	case "nodes":
		var nr nodeRecord
		if deleted || json.Unmarshal(val, &nr) != nil {
			delete(v.nodes, id)
			return
		}
		v.nodes[id] = nr
	case "names":
		var rec claimRecord
		if deleted || json.Unmarshal(val, &rec) != nil {
			delete(v.names, id)
			return
		}
		v.names[id] = cached{rec, rev}
	case "ports":
		p, err := strconv.ParseUint(id, 10, 16)
		if err != nil {
			return
		}
		var rec claimRecord
		if deleted || json.Unmarshal(val, &rec) != nil {
			delete(v.ports, uint16(p))
			return
		}
		v.ports[uint16(p)] = cached{rec, rev}
	}
}

// changed tells the registry and schedules a reconcile.
func (n *clusterNode) changed() {
	n.local.viewChanged()
	n.reconcileSoon()
}

func (n *clusterNode) reconcileSoon() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// reconcileLoop makes the records true (reconcile) when asked, and every
// LeaseTTL in any case.
func (n *clusterNode) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.LeaseTTL)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		case <-t.C:
		}
		if n.available() == nil {
			n.reconcile(ctx)
		}
	}
}

// reconcile compares the view with what this node's clients publish and
// writes the difference, each write a transaction on the revision seen
// (a lost race is settled by the next round):
//   - this node's records without a client here: offline since now;
//   - online records of nodes that are gone: offline since now;
//   - records of clients here marked offline (while cut off): online again;
//   - records gone (grace over while cut off): claimed again;
//   - names and ports of clients here that another node holds now: withdrawn
//     here, and the client told when another owner has them.
func (n *clusterNode) reconcile(ctx context.Context) {
	n.mu.Lock()
	wrote := n.wroteRev
	n.mu.Unlock()
	names, ports := n.local.localClaims()
	n.mu.Lock()
	if !n.loaded || n.viewRev < n.wroteRev {
		n.mu.Unlock()
		return // the view lags this node's own claims: wait for the watch, which asks again
	}
	if n.wroteRev != wrote {
		n.mu.Unlock()
		n.reconcileSoon() // a claim was written since the clients were listed: list them again
		return
	}
	type write struct {
		key string
		rec claimRecord
		rev int64 // 0: create
	}
	var writes []write
	type loss struct {
		name string
		port uint16
		tell bool
	}
	var losses []loss
	now := time.Now().UTC()
	check := func(key string, c cached, mine claimRecord, here bool) {
		rec := c.rec
		switch {
		case rec.Node == n.cfg.NodeID && here && rec.Owner == mine.Owner:
			if !rec.Left.IsZero() {
				writes = append(writes, write{key, mine, c.modRev})
			}
		case rec.Node == n.cfg.NodeID && rec.Left.IsZero():
			rec.Left = now
			writes = append(writes, write{key, rec, c.modRev})
		case rec.Node != n.cfg.NodeID && rec.Left.IsZero() && n.view.nodes[rec.Node].ID == "":
			rec.Left = now
			writes = append(writes, write{key, rec, c.modRev})
		}
	}
	for name, c := range n.view.names {
		mine, here := names[name]
		check(n.nameKey(name), c, mine, here)
	}
	for port, c := range n.view.ports {
		mine, here := ports[port]
		check(n.portKey(port), c, mine, here)
	}
	for name, mine := range names {
		c, ok := n.view.names[name]
		switch {
		case !ok && !mine.claiming:
			writes = append(writes, write{n.nameKey(name), mine, 0})
		case !ok:
		case c.rec.Node != n.cfg.NodeID || c.rec.Owner != mine.Owner:
			losses = append(losses, loss{name, 0, c.rec.Owner != mine.Owner})
		}
	}
	for port, mine := range ports {
		c, ok := n.view.ports[port]
		switch {
		case !ok && !mine.claiming:
			writes = append(writes, write{n.portKey(port), mine, 0})
		case !ok:
		case c.rec.Node != n.cfg.NodeID || c.rec.Owner != mine.Owner:
			losses = append(losses, loss{mine.Name, port, c.rec.Owner != mine.Owner})
		}
	}
	n.mu.Unlock()
	for _, l := range losses {
		n.log.Warn("name or port held elsewhere now: withdrawn here", "service", l.name, "port", l.port, "other_owner", l.tell)
		n.local.lost(l.name, l.port, l.tell)
	}
	for _, w := range writes {
		cmp := clientv3.Compare(clientv3.ModRevision(w.key), "=", w.rev)
		if w.rev == 0 {
			cmp = clientv3.Compare(clientv3.CreateRevision(w.key), "=", 0)
		}
		if err := n.put(ctx, w.key, w.rec, cmp); err != nil && !errors.Is(err, errLostRace) {
			n.log.Debug("reconcile write failed", "key", w.key, "err", err)
			return
		}
	}
}

// errLostRace is a transaction whose comparison failed.
var errLostRace = errors.New("cluster registry: the record changed meanwhile")

// put writes rec at key if cmp holds.
func (n *clusterNode) put(ctx context.Context, key string, rec claimRecord, cmp clientv3.Cmp) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	resp, err := n.etcd.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRegistryUnavailable, err)
	}
	n.mu.Lock()
	n.stats.Writes++
	if resp.Succeeded {
		n.wroteRev = max(n.wroteRev, resp.Header.Revision)
	}
	n.mu.Unlock()
	if !resp.Succeeded {
		return errLostRace
	}
	return nil
}

// claim gives key (a name's or a port's) to rec's owner on this node, if
// no other owner holds it: free, its own (a reconnect, here or on another
// node), or another's whose grace is over. what names it in errors.
func (n *clusterNode) claim(ctx context.Context, key, what string, rec claimRecord) error {
	for range 3 {
		if err := n.available(); err != nil {
			return err
		}
		gctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
		resp, err := n.etcd.Get(gctx, key)
		cancel()
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRegistryUnavailable, err)
		}
		cmp := clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
		if len(resp.Kvs) > 0 {
			var old claimRecord
			if err := json.Unmarshal(resp.Kvs[0].Value, &old); err == nil && old.reservedFor(rec.Owner, time.Now(), n.grace) {
				n.mu.Lock()
				n.stats.ClaimsRefused++
				n.mu.Unlock()
				if old.Left.IsZero() {
					return fmt.Errorf("%w: %s is already exposed by another client", quictun.ErrNameTaken, what)
				}
				return fmt.Errorf("%w: %s belongs to a client that is offline: it is kept for it until %s (--name-grace %s)",
					quictun.ErrNameTaken, what, old.Left.Add(n.grace).UTC().Format(time.RFC3339), n.grace)
			}
			cmp = clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)
		}
		err = n.put(ctx, key, rec, cmp)
		if errors.Is(err, errLostRace) {
			continue
		}
		if err == nil {
			n.mu.Lock()
			n.stats.Claims++
			n.mu.Unlock()
		}
		return err
	}
	return fmt.Errorf("%w: %s is being claimed by another client", quictun.ErrNameTaken, what)
}

// route finds where the name (port 0) or port is served: node is its
// node's record; offline says it is kept for an offline owner; ok false:
// not held.
func (n *clusterNode) route(name string, port uint16) (rec claimRecord, node nodeRecord, offline, ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var c cached
	if port != 0 {
		c, ok = n.view.ports[port]
	} else {
		c, ok = n.view.names[name]
	}
	if !ok {
		return claimRecord{}, nodeRecord{}, false, false
	}
	if !c.rec.Left.IsZero() {
		return c.rec, nodeRecord{}, time.Since(c.rec.Left) < n.grace, false
	}
	node, alive := n.view.nodes[c.rec.Node]
	if !alive {
		return c.rec, nodeRecord{}, true, false // its node is gone: offline, to be marked so
	}
	return c.rec, node, false, true
}

// remotePorts lists the online ports other nodes' clients hold.
func (n *clusterNode) remotePorts() map[uint16]claimRecord {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[uint16]claimRecord{}
	for p, c := range n.view.ports {
		if c.rec.Node != n.cfg.NodeID && c.rec.Left.IsZero() && n.view.nodes[c.rec.Node].ID != "" {
			out[p] = c.rec
		}
	}
	return out
}

// nodeAddrs lists the inter-node addresses of the registered nodes.
func (n *clusterNode) nodeAddrs() map[string]bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]bool{}
	for _, nr := range n.view.nodes {
		out[nr.Addr] = true
	}
	return out
}

// portOf finds the port owner had for its service name, from the view.
func (n *clusterNode) portOf(owner, name string) (uint16, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for p, c := range n.view.ports {
		if c.rec.Owner == owner && c.rec.Name == name {
			return p, true
		}
	}
	return 0, false
}

// portReserved reports whether port is kept for another owner than owner,
// as far as the view knows.
func (n *clusterNode) portReserved(port uint16, owner string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.view.ports[port]
	return ok && c.rec.reservedFor(owner, time.Now(), n.grace)
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// registerMetrics adds the node's cluster metrics to r.
func (n *clusterNode) registerMetrics(r *metrics.Registry) {
	locked := func(f func() float64) func() float64 {
		return func() float64 {
			n.mu.Lock()
			defer n.mu.Unlock()
			return f()
		}
	}
	r.Gauge("cluster_registry_available", "1 while this node's lease is current and etcd answers (new names may be claimed), else 0.",
		func() float64 {
			if n.available() == nil {
				return 1
			}
			return 0
		})
	r.Gauge("cluster_nodes", "Nodes registered in the cluster, as this node sees them.", locked(func() float64 { return float64(len(n.view.nodes)) }))
	r.Gauge("cluster_names", "Names held in the cluster (online or kept for an offline owner).", locked(func() float64 { return float64(len(n.view.names)) }))
	r.Gauge("cluster_ports", "Public ports held in the cluster.", locked(func() float64 { return float64(len(n.view.ports)) }))
	r.Counter("cluster_claims_total", "Names and ports this node claimed in etcd.", locked(func() float64 { return float64(n.stats.Claims) }))
	r.Counter("cluster_claims_refused_total", "Claims refused: held by another owner.", locked(func() float64 { return float64(n.stats.ClaimsRefused) }))
	r.Counter("cluster_claims_unavailable_total", "Claims refused because the cluster registry was unavailable.",
		locked(func() float64 { return float64(n.stats.Unavailable) }))
	r.Counter("cluster_etcd_writes_total", "Writes (transactions, puts) this node sent to etcd.", locked(func() float64 { return float64(n.stats.Writes) }))
	r.Counter("cluster_lease_renewals_total", "Lease renewals this node sent to etcd.", locked(func() float64 { return float64(n.stats.Renewals) }))
}
