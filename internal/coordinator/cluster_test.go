package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"quictunnel/quictun"
)

// testEtcd runs Debian's etcd on loopback for the test, or skips it.
func testEtcd(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd not installed (Debian package etcd-server; scripts/test-deps.sh installs it)")
	}
	port := func() int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}
	client, peer := fmt.Sprintf("http://127.0.0.1:%d", port()), fmt.Sprintf("http://127.0.0.1:%d", port())
	cmd := exec.Command(bin, "--name", "unit", "--data-dir", t.TempDir(), "--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "unit="+peer, "--log-level", "error", "--logger", "zap")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(client + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return client
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not answer at %s: %v", client, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// localSet is a node's own clients' names and ports, as a registry keeps
// them (claiming: being claimed, not yet published), and the names it was
// told it lost.
type localSet struct {
	mu       sync.Mutex
	claiming map[string]bool
	names    map[string]claimRecord
	ports    map[uint16]claimRecord
	losts    []string
}

func (l *localSet) localClaims() (map[string]claimRecord, map[uint16]claimRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	names, ports := map[string]claimRecord{}, map[uint16]claimRecord{}
	for k, v := range l.names {
		v.claiming = l.claiming[k]
		names[k] = v
	}
	for k, v := range l.ports {
		ports[k] = v
	}
	return names, ports
}

func (l *localSet) lost(name string, port uint16, tell bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.claiming[name] {
		return // as the registry: only what is published is withdrawn
	}
	delete(l.names, name)
	l.losts = append(l.losts, fmt.Sprintf("%s tell=%v", name, tell))
}

func (l *localSet) lostNames() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.losts...)
}

func (l *localSet) viewChanged() {}

// startNode runs a cluster node on etcd at url until the test ends (or
// the returned stop).
func startNode(t testing.TB, url, id string, grace time.Duration, local *localSet) (*clusterNode, func()) {
	t.Helper()
	return startNodeLease(t, url, id, grace, 2*time.Second, time.Second, local)
}

// startNodeLease is startNode with a lease and an etcd request timeout.
func startNodeLease(t testing.TB, url, id string, grace, lease, op time.Duration, local *localSet) (*clusterNode, func()) {
	t.Helper()
	cfg := ClusterConfig{Endpoints: []string{url}, NodeID: id, Listen: "127.0.0.1:0", Token: "t", LeaseTTL: lease, OpTimeout: op}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	if local.names == nil {
		local.names, local.ports, local.claiming = map[string]claimRecord{}, map[uint16]claimRecord{}, map[string]bool{}
	}
	n, err := newClusterNode(cfg, "127.0.0.1:1", grace, slog.New(slog.NewTextHandler(io.Discard, nil)), local)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	waitUntil(t, id+" registered", func() bool { return n.available() == nil })
	return n, stop
}

func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func etcdClient(t testing.TB, url string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func putRecord(t testing.TB, c *clientv3.Client, key string, rec claimRecord) {
	t.Helper()
	b, _ := json.Marshal(rec)
	if _, err := c.Put(context.Background(), key, string(b)); err != nil {
		t.Fatal(err)
	}
}

func getRecord(t testing.TB, c *clientv3.Client, key string) (claimRecord, bool) {
	t.Helper()
	resp, err := c.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return claimRecord{}, false
	}
	var rec claimRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		t.Fatal(err)
	}
	return rec, true
}

// TestClusterClaim: who may claim a name, given what etcd holds.
func TestClusterClaim(t *testing.T) {
	url := testEtcd(t)
	etcd := etcdClient(t, url)
	const grace = time.Minute
	local := &localSet{}
	n, _ := startNode(t, url, "n1", grace, local)
	local2 := &localSet{}
	startNode(t, url, "n2", grace, local2) // alive, its clients' records online
	for _, tc := range []struct {
		name  string
		held  *claimRecord // what etcd holds before
		owner string
		want  string // "" ok, else a part of the error
	}{
		{"free", nil, "x", ""},
		{"own name from another node", &claimRecord{Owner: "x", Node: "n2"}, "x", ""},
		{"own name kept while offline", &claimRecord{Owner: "x", Node: "n2", Left: time.Now().Add(-time.Second)}, "x", ""},
		{"another's, online", &claimRecord{Owner: "y", Node: "n2"}, "x", "already exposed by another client"},
		{"another's, online on a node gone", &claimRecord{Owner: "y", Node: "ghost"}, "x", "client"}, // online, or marked offline meanwhile
		{"another's, offline within grace", &claimRecord{Owner: "y", Node: "n2", Left: time.Now().Add(-time.Second)}, "x", "offline"},
		{"another's, offline past grace", &claimRecord{Owner: "y", Node: "n2", Left: time.Now().Add(-2 * grace)}, "x", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-")
			key := n.nameKey(name)
			if tc.held != nil {
				if tc.held.Node == "n2" && tc.held.Left.IsZero() {
					local2.mu.Lock()
					local2.names[name] = *tc.held
					local2.mu.Unlock()
				}
				putRecord(t, etcd, key, *tc.held)
			}
			rec := claimRecord{Owner: tc.owner, Node: "n1"}
			local.mu.Lock()
			local.names[name], local.claiming[name] = rec, true
			local.mu.Unlock()
			err := n.claim(t.Context(), key, "name", rec)
			local.mu.Lock()
			delete(local.claiming, name)
			if err != nil {
				delete(local.names, name)
			}
			local.mu.Unlock()
			got, _ := getRecord(t, etcd, key)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("claim: %v, want it granted", err)
			case tc.want == "" && (got.Owner != tc.owner || got.Node != "n1" || !got.Left.IsZero()):
				t.Errorf("etcd holds %+v after the claim, want %s's, online on n1", got, tc.owner)
			case tc.want != "" && (!errors.Is(err, quictun.ErrNameTaken) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("claim: %v, want name taken: %q", err, tc.want)
			case tc.want != "" && got.Owner != tc.held.Owner:
				t.Errorf("etcd holds %+v after a refused claim, want it unchanged", got)
			}
		})
	}
}

// TestClusterClaimRace: owners on two nodes claiming one name at once:
// exactly one gets it.
func TestClusterClaimRace(t *testing.T) {
	url := testEtcd(t)
	n1, _ := startNode(t, url, "n1", time.Minute, &localSet{})
	n2, _ := startNode(t, url, "n2", time.Minute, &localSet{})
	for round := range 5 {
		key := n1.nameKey(fmt.Sprintf("race%d", round))
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			n := []*clusterNode{n1, n2}[i%2]
			wg.Go(func() {
				errs[i] = n.claim(t.Context(), key, "name", claimRecord{Owner: fmt.Sprint("owner", i), Node: n.cfg.NodeID})
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, quictun.ErrNameTaken):
				t.Errorf("a losing claim: %v, want name taken", err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d claims won, want exactly 1: %v", round, won, errs)
		}
	}
}

// TestClusterUnavailable: without etcd, a claim is refused at once with
// "cluster registry unavailable", which clients retry (ErrTryLater).
func TestClusterUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close() // nothing answers there
	cfg := ClusterConfig{Endpoints: []string{url}, NodeID: "n1", Listen: "127.0.0.1:0", Token: "t", LeaseTTL: 2 * time.Second, OpTimeout: 200 * time.Millisecond}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	n, err := newClusterNode(cfg, "127.0.0.1:1", time.Minute, slog.New(slog.NewTextHandler(io.Discard, nil)), &localSet{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); n.run(ctx) }()
	defer func() { cancel(); <-done }()
	err = n.claim(t.Context(), n.nameKey("app"), "name", claimRecord{Owner: "x", Node: "n1"})
	if !errors.Is(err, ErrRegistryUnavailable) || !errors.Is(err, quictun.ErrTryLater) || !strings.HasPrefix(err.Error(), "cluster registry unavailable: ") {
		t.Errorf("claim without etcd: %v, want cluster registry unavailable (try later)", err)
	}
	if n.canServe() {
		t.Error("a node never registered may serve names")
	}
}

// TestClusterReconcile: what a node writes, or withdraws, when etcd and
// its clients disagree.
func TestClusterReconcile(t *testing.T) {
	url := testEtcd(t)
	etcd := etcdClient(t, url)
	local := &localSet{}
	n1, stop1 := startNode(t, url, "n1", time.Minute, local)
	local2 := &localSet{}
	n2, _ := startNode(t, url, "n2", time.Minute, local2)
	mine := claimRecord{Owner: "x", Node: "n1", Name: "app"}

	// A name of a node gone (its lease over, its records online) goes
	// offline: the grace period starts.
	putRecord(t, etcd, n2.nameKey("orphan"), claimRecord{Owner: "z", Node: "ghost"})
	n2.reconcileSoon()
	waitUntil(t, "orphan marked offline", func() bool { rec, _ := getRecord(t, etcd, n2.nameKey("orphan")); return !rec.Left.IsZero() })

	// A client's name marked offline while its node was cut off is put
	// back online; one gone from etcd is claimed again.
	local.mu.Lock()
	local.names["app"], local.names["gone"] = mine, claimRecord{Owner: "x", Node: "n1", Name: "gone"}
	local.mu.Unlock()
	offline := mine
	offline.Left = time.Now()
	putRecord(t, etcd, n1.nameKey("app"), offline)
	n1.reconcileSoon()
	waitUntil(t, "app online again", func() bool { rec, _ := getRecord(t, etcd, n1.nameKey("app")); return rec.Left.IsZero() })
	waitUntil(t, "gone claimed again", func() bool { rec, ok := getRecord(t, etcd, n1.nameKey("gone")); return ok && rec.Owner == "x" })

	// A name another owner holds now is withdrawn here, the client told.
	theirs := claimRecord{Owner: "y", Node: "n2", Name: "app"}
	// Written by n2 as its claim would be: pending (claiming) while the
	// write is under way, published after it. (Published before it, a
	// reconcile of n2 with the old view took it for lost: CI saw it.)
	local2.mu.Lock()
	local2.names["app"] = theirs
	local2.claiming = map[string]bool{"app": true}
	local2.mu.Unlock()
	if err := n2.put(t.Context(), n2.nameKey("app"), theirs, clientv3.Compare(clientv3.Version(n2.nameKey("app")), ">", 0)); err != nil {
		t.Fatal(err)
	}
	local2.mu.Lock()
	delete(local2.claiming, "app")
	local2.mu.Unlock()
	n2.reconcileSoon()
	waitUntil(t, "app withdrawn on n1", func() bool { return strings.Contains(strings.Join(local.lostNames(), ","), "app tell=true") })

	// A node that stops gives its lease back: the other marks its
	// clients' names offline.
	stop1()
	waitUntil(t, "gone marked offline after n1 stopped", func() bool {
		rec, _ := getRecord(t, etcd, n2.nameKey("gone"))
		return !rec.Left.IsZero()
	})
	if rec, _ := getRecord(t, etcd, n2.nameKey("app")); rec.Owner != "y" || !rec.Left.IsZero() {
		t.Errorf("app after n1 stopped: %+v, want y's, online", rec)
	}
	if err := n2.claim(t.Context(), n2.nameKey("gone"), "name", claimRecord{Owner: "y", Node: "n2"}); !errors.Is(err, quictun.ErrNameTaken) {
		t.Errorf("another owner claiming gone within its grace: %v, want name taken", err)
	}

}

var scaleClients = flag.Int("cluster-scale", 0, "TestClusterScale: register this many simulated clients (e.g. 10000) against 3 nodes and print the figures of docs/scaling.md")

// TestClusterScale registers -cluster-scale simulated clients, one name
// each, spread over three nodes on one etcd, 64 at a time, and reports
// the registration latency, etcd's write rate and the nodes' costs. Off
// unless the flag is given:
//
//	go test -run TestClusterScale -cluster-scale 10000 ./internal/coordinator/
func TestClusterScale(t *testing.T) {
	n := *scaleClients
	if n == 0 {
		t.Skip("set -cluster-scale N to run")
	}
	url := testEtcd(t)
	locals := []*localSet{{}, {}, {}}
	var nodes []*clusterNode
	for i, l := range locals {
		node, _ := startNodeLease(t, url, fmt.Sprint("n", i), time.Minute, DefaultClusterLease, 3*time.Second, l)
		nodes = append(nodes, node)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	lat := make([]time.Duration, n)
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan int)
	for range 64 {
		wg.Go(func() {
			for i := range next {
				node, local := nodes[i%3], locals[i%3]
				name := fmt.Sprintf("client%05d", i)
				rec := claimRecord{Owner: fmt.Sprintf("%064x", i), Node: node.cfg.NodeID, Client: name, Name: name, Kind: quictun.ServiceHTTP}
				local.mu.Lock()
				local.names[name], local.claiming[name] = rec, true
				local.mu.Unlock()
				t0 := time.Now()
				err := node.claim(context.Background(), node.nameKey(name), "name", rec)
				lat[i] = time.Since(t0)
				local.mu.Lock()
				delete(local.claiming, name)
				local.mu.Unlock()
				if err != nil {
					t.Errorf("client %d: %v", i, err)
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	took := time.Since(start)
	waitUntil(t, "every node's view", func() bool {
		for _, node := range nodes {
			node.mu.Lock()
			k := len(node.view.names)
			node.mu.Unlock()
			if k < n {
				return false
			}
		}
		return true
	})
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	slices.Sort(lat)
	var writes, renewals uint64
	for _, node := range nodes {
		node.mu.Lock()
		writes += node.stats.Writes
		renewals += node.stats.Renewals
		node.mu.Unlock()
	}
	t.Logf("%d clients on 3 nodes in %v: %.0f registrations/s; registration p50 %v, p99 %v, max %v",
		n, took.Round(time.Millisecond), float64(n)/took.Seconds(), lat[n/2].Round(time.Microsecond), lat[n*99/100].Round(time.Microsecond), lat[n-1].Round(time.Microsecond))
	t.Logf("etcd writes: %d in all (%.2f per client; %.0f writes/s while registering); lease renewals: %d in %v (3 nodes, one lease each, every LeaseTTL/3 = %v, whatever the clients)",
		writes, float64(writes)/float64(n), float64(writes)/took.Seconds(), renewals, took.Round(time.Second), DefaultClusterLease/3)
	t.Logf("heap of the 3 nodes' views (one process): %.1f MiB, %.0f bytes per client per node",
		float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/(1<<20), float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(n)/3)
}

// FuzzForwardHeader: a forward header that parses writes back to the
// same bytes' meaning.
func FuzzForwardHeader(f *testing.F) {
	f.Add(appendForwardHeader(nil, forwardHeader{name: "app", remote: netip.MustParseAddrPort("203.0.113.7:4242")}))
	f.Add(appendForwardHeader(nil, forwardHeader{port: 20001, remote: netip.MustParseAddrPort("[2001:db8::1]:80")}))
	f.Add(appendForwardHeader(nil, forwardHeader{name: "web", http: true, remote: netip.MustParseAddrPort("198.51.100.2:1")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := readForwardHeader(bytes.NewReader(b))
		if err != nil {
			return
		}
		again, err := readForwardHeader(bytes.NewReader(appendForwardHeader(nil, h)))
		if err != nil || again != h {
			t.Fatalf("%+v written and read back: %+v, %v", h, again, err)
		}
	})
}

// TestHostField: the Host field of a request head, whatever its case.
func TestHostField(t *testing.T) {
	for head, want := range map[string]string{
		"GET / HTTP/1.1\r\nHost: app.localhost:8080\r\nAccept: */*": "app.localhost:8080",
		"GET / HTTP/1.1\r\nhOsT:app.localhost":                      "app.localhost",
		"GET / HTTP/1.1\r\nX-Host: evil\r\nAccept: */*":             "",
		"Host: first-line-is-the-request":                           "",
	} {
		if got := hostField([]byte(head)); got != want {
			t.Errorf("hostField(%q) = %q, want %q", head, got, want)
		}
	}
}
