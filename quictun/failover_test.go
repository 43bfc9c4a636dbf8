package quictun

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

func TestExpandNode(t *testing.T) {
	hosts := map[string][]netip.Addr{
		"multi.test":  {netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("::ffff:198.51.100.1")},
		"single.test": {netip.MustParseAddr("198.51.100.2")},
	}
	lookup := func(_ context.Context, host string) ([]netip.Addr, error) {
		if a, ok := hosts[host]; ok {
			return a, nil
		}
		return nil, errors.New("no such host")
	}
	tests := []struct {
		node       Node
		serverName string
		want       []endpoint
	}{
		{Node{Addr: "198.51.100.9:443", TCP: "198.51.100.9:443"}, "",
			[]endpoint{{quic: "198.51.100.9:443", tcp: "198.51.100.9:443", serverName: "198.51.100.9"}}},
		{Node{Addr: "single.test:443", TCP: "single.test:443"}, "",
			[]endpoint{{quic: "single.test:443", tcp: "single.test:443", serverName: "single.test"}}},
		{Node{Addr: "gone.test:443", TCP: "gone.test:443"}, "",
			[]endpoint{{quic: "gone.test:443", tcp: "gone.test:443", serverName: "gone.test"}}},
		// Each address a candidate (the IPv4-mapped duplicate once), the
		// TCP port kept, the certificate checked for the name.
		{Node{Addr: "multi.test:443", TCP: "multi.test:8443"}, "", []endpoint{
			{quic: "198.51.100.1:443", tcp: "198.51.100.1:8443", serverName: "multi.test"},
			{quic: "[2001:db8::1]:443", tcp: "[2001:db8::1]:8443", serverName: "multi.test"},
		}},
		// A TCP transport on another host is dialed as given.
		{Node{Addr: "multi.test:443", TCP: "proxy.test:443"}, "coord.test", []endpoint{
			{quic: "198.51.100.1:443", tcp: "proxy.test:443", serverName: "coord.test"},
			{quic: "[2001:db8::1]:443", tcp: "proxy.test:443", serverName: "coord.test"},
		}},
	}
	for _, tt := range tests {
		if got := expandNode(t.Context(), tt.node, tt.serverName, lookup); !slices.Equal(got, tt.want) {
			t.Errorf("expandNode(%+v, %q) = %+v, want %+v", tt.node, tt.serverName, got, tt.want)
		}
	}
}

// raceConn is a Conn that only records its closing.
type raceConn struct {
	Conn
	closed atomic.Bool
}

func (c *raceConn) CloseWithError(quic.ApplicationErrorCode, string) error {
	c.closed.Store(true)
	return nil
}

// TestRaceDial: the first handshake to complete wins, whatever the order
// of the list; a later one is closed, a slower one cancelled and waited
// for; all failing joins their errors.
func TestRaceDial(t *testing.T) {
	errRefused := errors.New("refused")
	type outcome struct {
		delay time.Duration
		fail  bool
		hang  bool // until cancelled
	}
	tests := []struct {
		name     string
		outcomes []outcome
		want     int // index of the winner; -1: all fail
	}{
		{"one", []outcome{{}}, 0},
		{"nearest last", []outcome{{delay: 300 * time.Millisecond}, {delay: 200 * time.Millisecond}, {delay: 10 * time.Millisecond}}, 2},
		{"dead first", []outcome{{hang: true}, {delay: 50 * time.Millisecond}}, 1},
		{"failed nearest", []outcome{{fail: true}, {delay: 50 * time.Millisecond}, {hang: true}}, 1},
		{"all fail", []outcome{{fail: true}, {fail: true}}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var eps []endpoint
			conns := map[string]*raceConn{}
			var cancelled atomic.Int32
			for i := range tt.outcomes {
				ep := endpoint{quic: net.JoinHostPort("198.51.100.1", string(rune('0'+i)))}
				eps = append(eps, ep)
				conns[ep.quic] = &raceConn{}
			}
			dial := func(ctx context.Context, ep endpoint) (Conn, error) {
				o := tt.outcomes[slices.Index(eps, ep)]
				if o.hang {
					<-ctx.Done()
					cancelled.Add(1)
					return nil, ctx.Err()
				}
				time.Sleep(o.delay)
				if o.fail {
					return nil, errRefused
				}
				return conns[ep.quic], nil
			}
			won, err := raceDial(t.Context(), eps, dial)
			if tt.want < 0 {
				if !errors.Is(err, errRefused) || won.conn != nil {
					t.Fatalf("raceDial = %+v, %v; want the joined errors", won, err)
				}
				return
			}
			if err != nil || won.ep != eps[tt.want] || won.conn != conns[eps[tt.want].quic] {
				t.Fatalf("raceDial = %+v, %v; want %s", won, err, eps[tt.want])
			}
			for i, ep := range eps {
				o, closed := tt.outcomes[i], conns[ep.quic].closed.Load()
				if lost := i != tt.want && !o.fail && !o.hang; closed != lost {
					t.Errorf("%s closed=%v, want %v", ep, closed, lost)
				}
			}
			hangs := 0
			for _, o := range tt.outcomes {
				if o.hang {
					hangs++
				}
			}
			if int(cancelled.Load()) != hangs {
				t.Errorf("%d dials cancelled and waited for, want %d", cancelled.Load(), hangs)
			}
		})
	}
}

// failoverNode is a coordinator on loopback that a test can kill.
type failoverNode struct {
	pc   *net.UDPConn
	reg  *mapRegistry
	srv  *Server
	stop context.CancelFunc
	done chan error
}

func startFailoverNode(t *testing.T, mods ...func(*ServerConfig)) *failoverNode {
	return startFailoverNodeAt(t, "127.0.0.1:0", mods...)
}

// startFailoverNodeAt starts a node on addr (to restart a killed one).
func startFailoverNodeAt(t *testing.T, addr string, mods ...func(*ServerConfig)) *failoverNode {
	t.Helper()
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pc}
	n := &failoverNode{pc: pc, reg: newMapRegistry(), done: make(chan error, 1)}
	sc := ServerConfig{Transport: tr, Certificate: getPKI(t).cert, Token: "secret", Services: n.reg}
	for _, mod := range mods {
		mod(&sc)
	}
	n.srv, err = NewServer(sc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	n.stop = cancel
	go func() { n.done <- n.srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-n.done
		tr.Close()
		pc.Close()
	})
	return n
}

func (n *failoverNode) addr() string { return n.pc.LocalAddr().String() }

// kill makes the node vanish as a process killed with SIGKILL would: its
// socket closes and no close frame leaves.
func (n *failoverNode) kill() { n.pc.Close() }

// TestFailover: a client given three coordinators, one of which never
// answers, connects to one of the two that do; when that one vanishes
// without a word, the client is connected to the other within seconds
// (not QUIC's 30 s idle timeout), its exposed app is published there and
// answers, and forward sessions work through it. The killed node comes
// back: the client stays where it is until that node dies too, and then
// moves back.
func TestFailover(t *testing.T) {
	nodes := []*failoverNode{startFailoverNode(t), startFailoverNode(t)}
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	app := echoServer(t, "127.0.0.1")
	clientTr := newTransport(t, "127.0.0.1")
	c, err := NewClient(ClientConfig{
		Transport: clientTr, Token: "secret", RootCAs: getPKI(t).pool, ServerName: "localhost",
		Coordinators:   []Node{{Addr: silent.LocalAddr().String()}, {Addr: nodes[0].addr()}, {Addr: nodes[1].addr()}},
		PublicAddr:     clientTr.Conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		Services:       []ExposedService{{Kind: ServiceHTTP, Name: "app", Local: app}},
		ConnectTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitRegistered(t, c, 1)
	st := c.Stats()
	i := slices.IndexFunc(nodes, func(n *failoverNode) bool { return n.addr() == st.Coordinator })
	if i < 0 || st.Candidates != 3 || st.Failovers != 0 {
		t.Fatalf("stats after connecting: %+v; want one of the two live coordinators of 3 candidates", st)
	}
	dead, alive := nodes[i], nodes[1-i]
	if dead.reg.get("app") == nil || alive.reg.get("app") != nil {
		t.Fatal("app not published on the coordinator connected to, or published elsewhere")
	}

	dead.kill()
	killed := time.Now()
	const bound = 15 * time.Second // generous for a busy CPU; 30 s would be QUIC's idle timeout
	for alive.reg.get("app") == nil {
		if time.Since(killed) > bound {
			t.Fatalf("app not published on the other coordinator within %s of the kill: %+v", bound, c.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	pub, err := alive.reg.get("app").Dial(t.Context(), netip.MustParseAddrPort("203.0.113.5:5555"))
	if err != nil {
		t.Fatalf("public connection to the app after failover: %v", err)
	}
	echo(t, pub, "hello")
	pub.Close()
	t.Logf("app answers through the other coordinator %s after the kill", time.Since(killed).Round(time.Millisecond))
	if st := c.Stats(); st.Coordinator != alive.addr() || st.Failovers != 1 || !st.Connected {
		t.Fatalf("stats after failover: %+v; want connected to %s, 1 failover", st, alive.addr())
	}
	conn, err := c.Dial(t.Context(), app)
	if err != nil {
		t.Fatalf("forward session after failover: %v", err)
	}
	echo(t, conn, "forward")
	conn.Close()
	// The candidates that lost a race saw a connection closed before its
	// Hello: not a failed authentication.
	back := startFailoverNodeAt(t, dead.addr())
	for _, n := range nodes {
		if st := n.srv.Stats(); st.AuthFailures != 0 {
			t.Errorf("a coordinator counted %d failed authentications: %v", st.AuthFailures, st.AuthFailuresByReason)
		}
	}
	// Back, and nearer or not: no move while alive lives.
	time.Sleep(time.Second)
	if st := c.Stats(); st.Coordinator != alive.addr() || st.Failovers != 1 {
		t.Fatalf("the client moved while its coordinator lived: %+v", st)
	}
	alive.kill()
	killed = time.Now()
	for back.reg.get("app") == nil {
		if time.Since(killed) > bound {
			t.Fatalf("app not published on the node that came back within %s of the second kill: %+v", bound, c.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := c.Stats(); st.Coordinator != back.addr() || st.Failovers != 2 {
		t.Errorf("stats after the second failover: %+v; want connected to %s, 2 failovers", st, back.addr())
	}
}

// TestAutoFallsBackToTCPAmongCoordinators: with auto, when no candidate
// answers QUIC (UDP dropped), the candidates' TCP transports are raced,
// each at its own address, and the one that answers carries the control
// connection.
func TestAutoFallsBackToTCPAmongCoordinators(t *testing.T) {
	var holes []string // UDP ports that read nothing
	for range 2 {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		holes = append(holes, pc.LocalAddr().String())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadTCP := ln.Addr().String()
	ln.Close()
	h := newHarness(t, harnessOpts{via: TransportAuto, beforeRun: func(h *harness, c *ClientConfig) {
		c.Coordinator, c.CoordinatorTCP, c.QUICFallback = "", "", 300*time.Millisecond
		c.Coordinators = []Node{{Addr: holes[0], TCP: deadTCP}, {Addr: holes[1], TCP: h.tcpAddr}}
	}})
	select {
	case <-h.client.Connected():
	case <-time.After(5 * time.Second):
		t.Fatalf("not connected 5 s after start: %+v", h.client.Stats())
	}
	if st := h.client.Stats(); st.Transport != TransportTCP || st.Coordinator != h.tcpAddr || st.Candidates != 2 {
		t.Fatalf("stats %+v; want tcp to %s of 2 candidates", st, h.tcpAddr)
	}
	conn, err := h.client.Dial(t.Context(), echoServer(t, "127.0.0.1"))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	echo(t, conn, "over tcp")
	conn.Close()
}

// TestLosingCandidateIsNoAuthFailure: a connection its client closes
// without an error before saying Hello (a candidate that lost the race) is
// not counted as a failed authentication; one closed with an error is.
func TestLosingCandidateIsNoAuthFailure(t *testing.T) {
	n := startFailoverNode(t)
	tr := newTransport(t, "127.0.0.1")
	for _, code := range []ErrorCode{CodeOK, CodeProtocol} {
		conn, err := tr.Dial(t.Context(), n.pc.LocalAddr(), controlTLS(t), QUICConfig(10, 2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		// A packet after Dial returned (HANDSHAKE_DONE), or a while, says
		// the server completed the handshake too: it has the connection,
		// waiting for a Hello (closed sooner, the server may never see it).
		for n, start := conn.ConnectionStats().PacketsReceived, time.Now(); conn.ConnectionStats().PacketsReceived == n && time.Since(start) < 500*time.Millisecond; {
			time.Sleep(time.Millisecond)
		}
		conn.CloseWithError(quic.ApplicationErrorCode(code), "another coordinator was nearer")
	}
	deadline := time.Now().Add(15 * time.Second)
	for n.srv.Stats().AuthFailures == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the connection closed with an error was not counted: %+v", n.srv.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the first one, closed sooner, would have been counted by now
	if st := n.srv.Stats(); st.AuthFailures != 1 {
		t.Errorf("%d failed authentications counted (%v), want 1: the one closed with CodeProtocol", st.AuthFailures, st.AuthFailuresByReason)
	}
}

// runClient runs a client of nodes until the test ends.
func runClient(t *testing.T, nodes ...string) *Client {
	t.Helper()
	tr := newTransport(t, "127.0.0.1")
	cc := ClientConfig{Transport: tr, Token: "secret", RootCAs: getPKI(t).pool, ServerName: "localhost",
		PublicAddr: tr.Conn.LocalAddr().(*net.UDPAddr).AddrPort(), ConnectTimeout: 2 * time.Second}
	for _, n := range nodes {
		cc.Coordinators = append(cc.Coordinators, Node{Addr: n})
	}
	c, err := NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// TestNearestChosen: of two coordinators, the one 100 ms nearer carries the
// control connection, wherever it is in the list.
func TestNearestChosen(t *testing.T) {
	near, far := startFailoverNode(t), startFailoverNode(t)
	for _, farFirst := range []bool{true, false} {
		list := []string{near.addr(), newDelayRelay(t, far.addr(), 50*time.Millisecond).addr()}
		if farFirst {
			slices.Reverse(list)
		}
		c := runClient(t, list...)
		<-c.Connected()
		if st := c.Stats(); st.Coordinator != near.addr() || st.Candidates != 2 {
			t.Errorf("list %v: connected to %s of %d candidates, want %s", list, st.Coordinator, st.Candidates, near.addr())
		}
	}
}

// TestRefusingNodeSkipped: the nearest coordinator completes handshakes but
// refuses the Hello (it has its max-clients); the next attempt leaves it
// out and connects to the farther one, instead of trying the refusing one
// again and again.
func TestRefusingNodeSkipped(t *testing.T) {
	full := startFailoverNode(t, func(c *ServerConfig) { c.MaxClients = 1 })
	other := startFailoverNode(t)
	occupant := runClient(t, full.addr())
	<-occupant.Connected()
	farAddr := newDelayRelay(t, other.addr(), 50*time.Millisecond).addr()
	c := runClient(t, full.addr(), farAddr)
	select {
	case <-c.Connected():
	case <-time.After(10 * time.Second):
		t.Fatalf("not connected 10 s after start: %+v", c.Stats())
	}
	if st := c.Stats(); st.Coordinator != farAddr {
		t.Errorf("connected to %s, want %s (the one with room)", st.Coordinator, farAddr)
	}
}
