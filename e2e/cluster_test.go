package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"quictunnel/internal/coordinator"
	"quictunnel/internal/localproxy"
	"quictunnel/quictun"
)

// Helpers for tests of a cluster of coordinators (the binaries) sharing a
// real etcd (Debian's etcd-server). Exported so that tests of the cluster
// with clients that fail over can start N nodes and kill one.

// Etcd is an etcd server the test runs on loopback, with its data in a
// temporary directory; it is stopped when the test ends.
type Etcd struct {
	URL  string // client URL
	dir  string
	args []string
	p    *process
}

// StartEtcd starts etcd, or skips the test when the etcd binary is absent.
func StartEtcd(t *testing.T) *Etcd {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd not installed (Debian package etcd-server; scripts/test-deps.sh installs it)")
	}
	e := &Etcd{dir: t.TempDir()}
	client, peer := freeTCPPort(t), freeTCPPort(t)
	e.URL = "http://" + loop(client)
	peerURL := "http://" + loop(peer)
	e.args = []string{bin, "--name", "e2e", "--data-dir", e.dir, "--listen-client-urls", e.URL, "--advertise-client-urls", e.URL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL, "--initial-cluster", "e2e=" + peerURL,
		"--log-level", "warn", "--logger", "zap"}
	e.start(t)
	return e
}

func (e *Etcd) start(t *testing.T) {
	t.Helper()
	p := start(t, nil, e.args[0], e.args[1:]...)
	e.p = p
	t.Cleanup(func() { // before start's: etcd exits by its signal, not 0
		if p.killed {
			return
		}
		p.killed = true
		p.cmd.Process.Signal(syscall.SIGCONT)
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	waitFor(t, "etcd to answer", func() bool {
		resp, err := http.Get(e.URL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// Pause stops the etcd process (SIGSTOP): it answers nothing, as a
// partition would do.
func (e *Etcd) Pause() { e.p.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume lets a paused etcd go on (SIGCONT).
func (e *Etcd) Resume() { e.p.cmd.Process.Signal(syscall.SIGCONT) }

// Kill ends etcd with SIGKILL; Restart starts it again on the same data.
func (e *Etcd) Kill() { e.p.kill() }

// Restart starts a killed etcd again, on its data directory.
func (e *Etcd) Restart(t *testing.T) { e.start(t) }

// ClusterOptions shape the nodes StartCluster starts.
type ClusterOptions struct {
	Nodes int           // default 3
	Grace time.Duration // --name-grace; default 1m
	Lease time.Duration // --cluster-lease; default 2s
	// Ports is the public TCP port range of every node; default a random
	// range of 20 ports.
	Ports coordinator.PortRange
	// EtcdURLs, if set, are the first nodes' --cluster-etcd (one each, in
	// order), instead of etcd's URL: an EtcdProxy to cut one off.
	EtcdURLs []string
}

// ClusterTokens are the client tokens every node accepts, by client name.
var ClusterTokens = map[string]string{
	"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "carol": "carol-token-0123456789a", "dave": "dave-token-0123456789ab",
}

// ClusterNode is one coordinator binary of a cluster. Its public ports
// (HTTP and the port range) listen on Bind, an address of its own on
// loopback (127.0.0.N), since every node listens on every claimed port.
type ClusterNode struct {
	ID       string
	QUIC     string // the clients' address
	Reporter string // STUN
	HTTP     string // public HTTP, NAME.localhost
	Bind     string // the public ports' address
	Link     string // inter-node QUIC
	Metrics  string // --metrics-listen: /metrics and /cluster
	args     []string
	p        *process
}

// StartCluster starts opts.Nodes coordinators on etcd and waits until
// each has registered in it.
func StartCluster(t *testing.T, etcd *Etcd, opts ClusterOptions) []*ClusterNode {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Grace == 0 {
		opts.Grace = time.Minute
	}
	if opts.Lease == 0 {
		opts.Lease = 2 * time.Second
	}
	if opts.Ports == (coordinator.PortRange{}) {
		base := 20000 + rand.IntN(500)*20
		opts.Ports = coordinator.PortRange{Min: uint16(base), Max: uint16(base + 19)}
	}
	certs, err := filepath.Abs(certsDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.yaml")
	var b strings.Builder
	b.WriteString("tokens:\n")
	for who, tok := range ClusterTokens {
		fmt.Fprintf(&b, "  - token: %s\n    client: %s\n", tok, who)
	}
	if err := os.WriteFile(tokens, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	clusterToken := filepath.Join(dir, "cluster-token")
	os.WriteFile(clusterToken, []byte("cluster-secret-0123456789\n"), 0o600)
	nodes := make([]*ClusterNode, opts.Nodes)
	for i := range nodes {
		bind := fmt.Sprintf("127.0.0.%d", i+1)
		n := &ClusterNode{ID: fmt.Sprintf("node-%c", 'a'+i), QUIC: loop(freeUDPPort(t)), Reporter: loop(freeUDPPort(t)),
			HTTP: net.JoinHostPort(bind, strconv.Itoa(freeTCPPort(t))), Bind: bind, Link: loop(freeUDPPort(t)), Metrics: loop(freeTCPPort(t))}
		etcdURL := etcd.URL
		if i < len(opts.EtcdURLs) {
			etcdURL = opts.EtcdURLs[i]
		}
		n.args = []string{"--listen", n.QUIC, "--reporter-listen", n.Reporter, "--tokens", tokens, "--http", n.HTTP,
			"--domain", "localhost", "--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
			"--port-range", fmt.Sprintf("%d-%d", opts.Ports.Min, opts.Ports.Max), "--public-bind", bind,
			"--name-grace", opts.Grace.String(), "--shutdown-timeout", "0s", "--log-level", "debug",
			"--cluster-etcd", etcdURL, "--node-id", n.ID, "--cluster-listen", n.Link, "--cluster-token-file", clusterToken,
			"--cluster-lease", opts.Lease.String(), "--metrics-listen", n.Metrics}
		nodes[i] = n
		n.Start(t)
	}
	return nodes
}

// Start starts the node (again, after Kill or Stop) and waits until it
// has registered in etcd.
func (n *ClusterNode) Start(t *testing.T) {
	t.Helper()
	n.p = start(t, nil, "coordinator", n.args...)
	waitFor(t, n.ID+" registered in etcd", func() bool { return strings.Contains(n.p.out.String(), "node registered in the cluster registry") })
}

// Kill ends the node with SIGKILL.
func (n *ClusterNode) Kill() { n.p.kill() }

// Stop ends the node with SIGINT and waits for it to exit.
func (n *ClusterNode) Stop(t *testing.T) {
	t.Helper()
	n.p.killed = true // the start cleanup's SIGINT is done here
	n.p.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-n.p.done:
		if err != nil {
			t.Errorf("%s exited with %v after SIGINT", n.ID, err)
		}
	case <-time.After(15 * time.Second):
		n.p.cmd.Process.Kill()
		<-n.p.done
		t.Errorf("%s did not stop on SIGINT", n.ID)
	}
}

// Output is the node's log so far.
func (n *ClusterNode) Output() string { return n.p.out.String() }

// ClusterClient starts who's localproxy (in process) on node, exposing
// each service (Local empty: an HTTP app answering who, or for TCP an echo
// server), and waits for the first outcome of every registration. The
// returned stop ends it; the test's end does too.
func ClusterClient(t *testing.T, node *ClusterNode, who string, services ...quictun.ExposedService) (*localproxy.Proxy, func()) {
	t.Helper()
	for i := range services {
		if services[i].Local != "" {
			continue
		}
		if services[i].Kind == quictun.ServiceTCP {
			services[i].Local = startTCPEcho(t)
			continue
		}
		app := startTarget(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, who) }))
		services[i].Local = app.Listener.Addr().String()
	}
	_, pool := loadCoordinatorCert(t)
	log := &logBuffer{}
	p, err := localproxy.New(localproxy.Config{
		Listen: "127.0.0.1:0", UDPListen: "127.0.0.1:0", Coordinator: node.QUIC, Reporter: node.Reporter,
		Token: ClusterTokens[who], RootCAs: pool, ServerName: "localhost", Name: who, ConnectTimeout: 2 * time.Second,
		RegisterRetry: 100 * time.Millisecond, Logger: log.logger(), Services: services,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("%s's log:\n%s", who, log)
		}
	})
	waitFor(t, who+"'s registrations", func() bool { return len(p.Client().Registrations()) == len(services) })
	return p, stop
}

// ClusterGet asks the public HTTP address addr for NAME.localhost and
// returns the status and body (status 0 and the error on failure).
func ClusterGet(t *testing.T, addr, name string) (int, string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+addr+"/", nil)
	req.Host = name + ".localhost"
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// ClusterEcho sends a line to host:port and returns what came back.
func ClusterEcho(host string, port uint16, line string) (string, error) {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(int(port))), 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line); err != nil {
		return "", err
	}
	b := make([]byte, len(line))
	_, err = io.ReadFull(c, b)
	return string(b), err
}

// registration is who's registration of service, as it stands.
func registration(p *localproxy.Proxy, service string) (quictun.Registration, bool) {
	for _, r := range p.Client().Registrations() {
		if r.Service.Name == service {
			return r, true
		}
	}
	return quictun.Registration{}, false
}

// TestClusterServesAnyNameFromAnyNode: three coordinators on one etcd.
// alice's app and TCP service, published on node A, answer on B and C by
// Host and by port; bob (on B) and carol (on C) racing for one name: one
// wins, the other is refused, and the public reaches the winner from
// every node; with etcd stopped the names held keep answering and a new
// one is refused with "cluster registry unavailable", and once etcd is
// back it is published.
func TestClusterServesAnyNameFromAnyNode(t *testing.T) {
	etcd := StartEtcd(t)
	nodes := StartCluster(t, etcd, ClusterOptions{})
	a, b, c := nodes[0], nodes[1], nodes[2]
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s's log:\n%s", n.ID, n.Output())
			}
		}
	})
	alice, _ := ClusterClient(t, a, "alice", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app"},
		quictun.ExposedService{Kind: quictun.ServiceTCP, Name: "db"})
	db, _ := registration(alice, "db")
	if app, _ := registration(alice, "app"); app.Err != nil || db.Err != nil {
		t.Fatalf("alice's services: %+v", alice.Client().Registrations())
	}
	for _, n := range nodes {
		waitFor(t, "app through "+n.ID, func() bool { status, body := ClusterGet(t, n.HTTP, "app"); return status == 200 && body == "alice" })
		waitFor(t, "db through "+n.ID, func() bool { got, err := ClusterEcho(n.Bind, db.Port, "ping\n"); return err == nil && got == "ping\n" })
	}

	// bob and carol race for "race", on two nodes at once.
	var wg sync.WaitGroup
	var bob, carol *localproxy.Proxy
	wg.Go(func() {
		bob, _ = ClusterClient(t, b, "bob", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "race"})
	})
	wg.Go(func() {
		carol, _ = ClusterClient(t, c, "carol", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "race"})
	})
	wg.Wait()
	rb, _ := registration(bob, "race")
	rc, _ := registration(carol, "race")
	if (rb.Err == nil) == (rc.Err == nil) {
		t.Fatalf("bob and carol racing for one name: bob %v, carol %v; want exactly one refused", rb.Err, rc.Err)
	}
	winner, loser := "bob", rc.Err
	if rb.Err != nil {
		winner, loser = "carol", rb.Err
	}
	var se *quictun.SessionError
	if !errors.As(loser, &se) || se.Code != quictun.CodeNameTaken {
		t.Errorf("the loser's refusal: %v, want name taken", loser)
	}
	for _, n := range nodes {
		waitFor(t, "race through "+n.ID, func() bool { status, body := ClusterGet(t, n.HTTP, "race"); return status == 200 && body == winner })
	}

	// coordinator cluster status: the nodes, clients per node, names and
	// ports.
	out, err := exec.Command(filepath.Join(binaries(t), "coordinator"), "--cluster-etcd", etcd.URL, "cluster", "status").CombinedOutput()
	if err != nil {
		t.Fatalf("coordinator cluster status: %v\n%s", err, out)
	}
	for _, want := range []string{"nodes (3)", "node-a ", "clients 1  names 1  ports 1", "names (2)", "app ", "client alice",
		"race ", "client " + winner, "ports (1)", strconv.Itoa(int(db.Port)) + " "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("coordinator cluster status lacks %q:\n%s", want, out)
		}
	}

	// The same from a node's status endpoint (its own view), as JSON.
	resp, err := http.Get("http://" + c.Metrics + "/cluster")
	if err != nil {
		t.Fatalf("%s's /cluster: %v", c.ID, err)
	}
	var st coordinator.ClusterStatus
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil || len(st.Nodes) != 3 || len(st.Names) != 2 || len(st.Ports) != 1 || st.Ports[0].Port != db.Port {
		t.Errorf("%s's /cluster: %v, %d nodes, names %+v, ports %+v; want 3 nodes, app and race, port %d", c.ID, err, len(st.Nodes), st.Names, st.Ports, db.Port)
	}
	for _, h := range st.Names {
		if h.Name == "app" && (h.Client != "alice" || h.Node != a.ID || !h.Online) {
			t.Errorf("%s's /cluster: app held by %+v, want alice on %s, online", c.ID, h, a.ID)
		}
	}

	// etcd stops answering.
	etcd.Pause()
	paused := true
	defer func() {
		if paused {
			etcd.Resume()
		}
	}()
	dave, _ := ClusterClient(t, b, "dave", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "new"})
	waitFor(t, "dave refused for the registry", func() bool {
		r, _ := registration(dave, "new")
		return r.Err != nil && strings.Contains(r.Err.Error(), "cluster registry unavailable")
	})
	for _, n := range nodes {
		if status, body := ClusterGet(t, n.HTTP, "app"); status != 200 || body != "alice" {
			t.Errorf("app through %s with etcd stopped: %d %q, want alice's", n.ID, status, body)
		}
		if got, err := ClusterEcho(n.Bind, db.Port, "pong\n"); err != nil || got != "pong\n" {
			t.Errorf("db through %s with etcd stopped: %q %v", n.ID, got, err)
		}
	}
	if status, _ := ClusterGet(t, a.HTTP, "new"); status != 404 {
		t.Errorf("new through A with etcd stopped: %d, want 404", status)
	}

	etcd.Resume()
	paused = false
	waitFor(t, "dave's name published once etcd is back", func() bool { r, _ := registration(dave, "new"); return r.Err == nil })
	// One keep-alive connection to B asking for dave's name (B's client)
	// and then alice's (A's): the second request is forwarded on its own.
	tr := &http.Transport{MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	keepAlive := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	waitFor(t, "new through B", func() bool { status, body := ClusterGet(t, b.HTTP, "new"); return status == 200 && body == "dave" })
	for _, want := range []string{"new", "app", "new", "app"} {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+b.HTTP+"/", nil)
		req.Host = want + ".localhost"
		resp, err := keepAlive.Do(req)
		if err != nil {
			t.Fatalf("%s on a keep-alive connection to B: %v", want, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if who := map[string]string{"new": "dave", "app": "alice"}[want]; resp.StatusCode != 200 || string(body) != who {
			t.Errorf("%s on a keep-alive connection to B: %d %q, want %s's", want, resp.StatusCode, body, who)
		}
	}
	for _, n := range nodes {
		waitFor(t, "new through "+n.ID, func() bool { status, body := ClusterGet(t, n.HTTP, "new"); return status == 200 && body == "dave" })
		waitFor(t, "app through "+n.ID+" after etcd came back", func() bool {
			status, body := ClusterGet(t, n.HTTP, "app")
			return status == 200 && body == "alice"
		})
	}
}

// TestClusterNameGraceAcrossRestart: alice's name, published on node A,
// stays hers while every node restarts (she being offline): bob, on
// another node, is refused it and the public gets 502 "offline"; alice,
// connecting to a third node, gets it back.
func TestClusterNameGraceAcrossRestart(t *testing.T) {
	etcd := StartEtcd(t)
	nodes := StartCluster(t, etcd, ClusterOptions{})
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s's log:\n%s", n.ID, n.Output())
			}
		}
	})
	_, stopAlice := ClusterClient(t, nodes[0], "alice", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app"})
	waitFor(t, "app through C", func() bool { status, _ := ClusterGet(t, nodes[2].HTTP, "app"); return status == 200 })
	stopAlice()
	for _, n := range nodes {
		n.Stop(t)
	}
	for _, n := range nodes {
		n.Start(t)
	}
	bob, _ := ClusterClient(t, nodes[1], "bob", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app"})
	r, _ := registration(bob, "app")
	var se *quictun.SessionError
	if !errors.As(r.Err, &se) || se.Code != quictun.CodeNameTaken || !strings.Contains(se.Reason, "offline") {
		t.Errorf("bob's app after every node restarted: %v, want refused (kept for a client that is offline)", r.Err)
	}
	if status, body := ClusterGet(t, nodes[0].HTTP, "app"); status != 502 || !strings.Contains(body, "offline") {
		t.Errorf("app after the restart: %d %q, want 502 offline", status, body)
	}
	alice, _ := ClusterClient(t, nodes[2], "alice", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app"})
	if r, _ := registration(alice, "app"); r.Err != nil {
		t.Fatalf("alice back on C: %v", r.Err)
	}
	for _, n := range nodes {
		waitFor(t, "alice's app through "+n.ID, func() bool { status, body := ClusterGet(t, n.HTTP, "app"); return status == 200 && body == "alice" })
	}
}

// EtcdProxy is a TCP proxy to etcd that a test can cut: a node whose
// --cluster-etcd points at it is partitioned from etcd while the others
// are not.
type EtcdProxy struct {
	URL    string
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

// StartEtcdProxy proxies to etcd until the test ends.
func StartEtcdProxy(t *testing.T, etcd *Etcd) *EtcdProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &EtcdProxy{URL: "http://" + ln.Addr().String(), ln: ln, target: strings.TrimPrefix(etcd.URL, "http://"), conns: map[net.Conn]bool{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *EtcdProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.relay(c) })
	}
}

func (p *EtcdProxy) relay(c net.Conn) {
	defer c.Close()
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	if !p.track(c, up) {
		return
	}
	defer p.untrack(c, up)
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

func (p *EtcdProxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	for _, c := range cs {
		p.conns[c] = true
	}
	return true
}

func (p *EtcdProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

// Cut closes every connection through the proxy and refuses new ones.
func (p *EtcdProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Heal lets connections through again.
func (p *EtcdProxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// TestClusterPartitionedNodeStopsServing: node A is cut off from etcd
// while its client alice holds "app". A keeps serving app while no one
// else can have it; once A's lease has ended and the grace period passed,
// bob claims app on B, and from then on A never answers with alice's app
// (503: it cannot prove the name is still hers). When A is back in touch
// with etcd it withdraws app from alice and tells her (she is refused
// it, held by bob), and every node serves bob's.
func TestClusterPartitionedNodeStopsServing(t *testing.T) {
	etcd := StartEtcd(t)
	proxy := StartEtcdProxy(t, etcd)
	const lease, grace = 2 * time.Second, 3 * time.Second
	nodes := StartCluster(t, etcd, ClusterOptions{Lease: lease, Grace: grace, EtcdURLs: []string{proxy.URL}})
	a, b := nodes[0], nodes[1]
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s's log:\n%s", n.ID, n.Output())
			}
		}
	})
	alice, _ := ClusterClient(t, a, "alice", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app"})
	waitFor(t, "app through B", func() bool { status, body := ClusterGet(t, b.HTTP, "app"); return status == 200 && body == "alice" })

	proxy.Cut()
	cut := time.Now()
	if status, body := ClusterGet(t, a.HTTP, "app"); status != 200 || body != "alice" {
		t.Errorf("app through A just cut off: %d %q, want alice's", status, body)
	}
	bob, _ := ClusterClient(t, b, "bob", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app"})
	waitFor(t, "bob to get app", func() bool { r, _ := registration(bob, "app"); return r.Err == nil })
	// A's lease ends lease after its last renewal, which went out up to
	// lease/3 (the renewal interval) before the cut.
	if took, least := time.Since(cut), lease-lease/3+grace; took < least {
		t.Errorf("bob got app %v after A was cut off, before its lease (%v, less a renewal interval) and the grace period (%v) ended",
			took, lease, grace)
	}
	for range 5 {
		if status, body := ClusterGet(t, a.HTTP, "app"); status == 200 && body == "alice" {
			t.Fatalf("A served alice's app after bob got it: two clients served one name")
		} else if status != 503 {
			t.Errorf("app through cut-off A after bob got it: %d %q, want 503", status, body)
		}
	}
	if status, body := ClusterGet(t, b.HTTP, "app"); status != 200 || body != "bob" {
		t.Errorf("app through B: %d %q, want bob's", status, body)
	}

	proxy.Heal()
	waitFor(t, "alice told app is bob's", func() bool {
		r, ok := registration(alice, "app")
		var se *quictun.SessionError
		return ok && errors.As(r.Err, &se) && se.Code == quictun.CodeNameTaken
	})
	waitFor(t, "app through A back to bob's", func() bool { status, body := ClusterGet(t, a.HTTP, "app"); return status == 200 && body == "bob" })
	if !strings.Contains(a.Output(), "was given to another client while this coordinator was cut off") &&
		!strings.Contains(a.Output(), "held elsewhere now") {
		t.Errorf("A's log does not say it withdrew app")
	}
}

// TestClusterClientMovesAfterNodeKilled: node A, where alice's app and
// TCP service are, is killed (SIGKILL). The public gets 502 from the
// other nodes, never another app; alice connecting to B takes her name
// and her port back at once (the same owner: no wait for A's lease or the
// grace period), and every remaining node serves them.
func TestClusterClientMovesAfterNodeKilled(t *testing.T) {
	etcd := StartEtcd(t)
	nodes := StartCluster(t, etcd, ClusterOptions{})
	a, b, c := nodes[0], nodes[1], nodes[2]
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s's log:\n%s", n.ID, n.Output())
			}
		}
	})
	services := func() []quictun.ExposedService {
		return []quictun.ExposedService{{Kind: quictun.ServiceHTTP, Name: "app"}, {Kind: quictun.ServiceTCP, Name: "db"}}
	}
	alice, stopAlice := ClusterClient(t, a, "alice", services()...)
	db, _ := registration(alice, "db")
	waitFor(t, "app through C", func() bool { status, body := ClusterGet(t, c.HTTP, "app"); return status == 200 && body == "alice" })

	a.Kill()
	stopAlice()
	if status, body := ClusterGet(t, c.HTTP, "app"); status != 502 {
		t.Errorf("app through C with A killed: %d %q, want 502", status, body)
	}
	moved, _ := ClusterClient(t, b, "alice", services()...)
	for _, r := range moved.Client().Registrations() {
		if r.Err != nil {
			t.Fatalf("alice on B: %s refused: %v", r.Service.Name, r.Err)
		}
	}
	if r, _ := registration(moved, "db"); r.Port != db.Port {
		t.Errorf("alice on B: db on port %d, want her port %d", r.Port, db.Port)
	}
	for _, n := range []*ClusterNode{b, c} {
		waitFor(t, "app through "+n.ID, func() bool { status, body := ClusterGet(t, n.HTTP, "app"); return status == 200 && body == "alice" })
		waitFor(t, "db through "+n.ID, func() bool { got, err := ClusterEcho(n.Bind, db.Port, "ping\n"); return err == nil && got == "ping\n" })
	}
}
