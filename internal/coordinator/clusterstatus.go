package coordinator

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ClusterStatus is what a cluster's registry holds: the nodes, with the
// clients connected to each, and every name and port.
type ClusterStatus struct {
	Revision int64               `json:"revision"` // etcd's, when read
	Nodes    []ClusterNodeStatus `json:"nodes"`
	Names    []ClusterHold       `json:"names"`
	Ports    []ClusterHold       `json:"ports"`
}

// ClusterNodeStatus is one node and what its clients hold.
type ClusterNodeStatus struct {
	ID      string    `json:"id"`
	Addr    string    `json:"addr"`
	Started time.Time `json:"started"`
	Clients int       `json:"clients"` // connected clients holding a name or port here
	Names   int       `json:"names"`
	Ports   int       `json:"ports"`
}

// ClusterHold is a name or a port and who holds it.
type ClusterHold struct {
	Name   string    `json:"name"` // the service's name
	Port   uint16    `json:"port,omitempty"`
	Node   string    `json:"node"`
	Client string    `json:"client"`
	Owner  string    `json:"owner"` // a prefix of the owner's key (a hash)
	Online bool      `json:"online"`
	Left   time.Time `json:"left,omitzero"`
	// NodeGone says the node holding it online has no lease any more
	// (the other nodes are about to mark it offline).
	NodeGone bool `json:"node_gone,omitempty"`
}

// ReadClusterStatus reads the registry of the cluster whose etcd is at
// endpoints (prefix: Cluster.Prefix, "" for the default).
func ReadClusterStatus(ctx context.Context, endpoints []string, prefix string) (ClusterStatus, error) {
	cfg := ClusterConfig{Endpoints: endpoints, Prefix: prefix, NodeID: "status", Token: "-", Listen: "-"}
	if err := cfg.validate(); err != nil {
		return ClusterStatus{}, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: cfg.OpTimeout, Logger: zap.NewNop()})
	if err != nil {
		return ClusterStatus{}, fmt.Errorf("cluster registry %s: %w", strings.Join(endpoints, ","), err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, cfg.Prefix, clientv3.WithPrefix())
	if err != nil {
		return ClusterStatus{}, fmt.Errorf("%w: %s: %w", ErrRegistryUnavailable, strings.Join(endpoints, ","), err)
	}
	n := &clusterNode{cfg: cfg}
	v := clusterView{nodes: map[string]nodeRecord{}, names: map[string]cached{}, ports: map[uint16]cached{}}
	for _, kv := range resp.Kvs {
		n.apply(&v, string(kv.Key), kv.Value, kv.ModRevision, false)
	}
	return v.status(resp.Header.Revision), nil
}

// status summarises v.
func (v *clusterView) status(rev int64) ClusterStatus {
	st := ClusterStatus{Revision: rev, Nodes: []ClusterNodeStatus{}, Names: []ClusterHold{}, Ports: []ClusterHold{}}
	byNode := map[string]*ClusterNodeStatus{}
	clients := map[string]map[string]bool{}
	for id, nr := range v.nodes {
		byNode[id] = &ClusterNodeStatus{ID: id, Addr: nr.Addr, Started: nr.Started}
		clients[id] = map[string]bool{}
	}
	hold := func(rec claimRecord, port uint16) ClusterHold {
		h := ClusterHold{Name: rec.Name, Port: port, Node: rec.Node, Client: rec.Client, Owner: rec.Owner[:min(12, len(rec.Owner))],
			Online: rec.Left.IsZero(), Left: rec.Left}
		ns := byNode[rec.Node]
		h.NodeGone = h.Online && ns == nil
		if h.Online && ns != nil {
			clients[rec.Node][rec.Owner+"\x00"+rec.Client] = true
			if port != 0 {
				ns.Ports++
			} else {
				ns.Names++
			}
		}
		return h
	}
	for name, c := range v.names {
		h := hold(c.rec, 0)
		h.Name = name
		st.Names = append(st.Names, h)
	}
	for port, c := range v.ports {
		st.Ports = append(st.Ports, hold(c.rec, port))
	}
	for id, ns := range byNode {
		ns.Clients = len(clients[id])
		st.Nodes = append(st.Nodes, *ns)
	}
	slices.SortFunc(st.Nodes, func(a, b ClusterNodeStatus) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(st.Names, func(a, b ClusterHold) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(st.Ports, func(a, b ClusterHold) int { return cmp.Compare(a.Port, b.Port) })
	return st
}

// ClusterStatus is this node's view of the cluster registry (its watch's
// cache); ok false outside a cluster.
func (c *Coordinator) ClusterStatus() (ClusterStatus, bool) {
	if c.registry == nil || c.registry.cluster == nil {
		return ClusterStatus{}, false
	}
	n := c.registry.cluster
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.view.status(n.viewRev), true
}

// serveClusterStatus answers the metrics listener's /cluster: this node's
// view of the cluster (what "coordinator cluster status --json" reads
// from etcd itself), as JSON.
func (c *Coordinator) serveClusterStatus(w http.ResponseWriter, _ *http.Request) {
	st, _ := c.ClusterStatus()
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}

// WriteText writes st for people: one line per node, name and port.
func (st ClusterStatus) WriteText(w io.Writer, now time.Time) {
	fmt.Fprintf(w, "nodes (%d)\n", len(st.Nodes))
	for _, n := range st.Nodes {
		fmt.Fprintf(w, "  %-16s %-22s up %-10s clients %d  names %d  ports %d\n", n.ID, n.Addr,
			now.Sub(n.Started).Round(time.Second), n.Clients, n.Names, n.Ports)
	}
	state := func(h ClusterHold) string {
		switch {
		case h.NodeGone:
			return "online on a node gone"
		case h.Online:
			return "online"
		}
		return "offline " + now.Sub(h.Left).Round(time.Second).String()
	}
	fmt.Fprintf(w, "names (%d)\n", len(st.Names))
	for _, h := range st.Names {
		fmt.Fprintf(w, "  %-24s %-16s client %-16s owner %s  %s\n", h.Name, h.Node, h.Client, h.Owner, state(h))
	}
	fmt.Fprintf(w, "ports (%d)\n", len(st.Ports))
	for _, h := range st.Ports {
		fmt.Fprintf(w, "  %-6s %-17s %-16s client %-16s owner %s  %s\n", strconv.Itoa(int(h.Port)), h.Name, h.Node, h.Client, h.Owner, state(h))
	}
}

// MarshalIndent is st as indented JSON.
func (st ClusterStatus) MarshalIndent() ([]byte, error) { return json.MarshalIndent(st, "", "  ") }
