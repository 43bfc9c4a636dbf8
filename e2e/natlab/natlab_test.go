package natlab_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	osexec "os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"quictunnel/e2e/natlab"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recvTimeout bounds every wait for a packet that should arrive.
const recvTimeout = 5 * time.Second

// grace is how long, after a marker packet, a blocked packet that was sent
// before the marker (on another path) is still waited for.
const grace = 150 * time.Millisecond

func listen(t *testing.T, h *natlab.Host, addr string) *net.UDPConn {
	t.Helper()
	c, err := h.ListenUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func port(c *net.UDPConn) uint16 { return c.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

func send(t *testing.T, c *net.UDPConn, to netip.AddrPort, msg string) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort([]byte(msg), to); err != nil {
		t.Fatalf("send %q to %s: %v", msg, to, err)
	}
}

// read returns the next packet on c, or ok=false at the deadline.
func read(t *testing.T, c *net.UDPConn, deadline time.Time) (msg string, from netip.AddrPort, ok bool) {
	t.Helper()
	if err := c.SetReadDeadline(deadline); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "", netip.AddrPort{}, false
	}
	if err != nil {
		t.Fatalf("read on %s: %v", c.LocalAddr(), err)
	}
	return string(buf[:n]), netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), true
}

// mustRecv waits for msg on c and returns where it came from; any other
// packet fails the test.
func mustRecv(t *testing.T, c *net.UDPConn, msg string) netip.AddrPort {
	t.Helper()
	got, from, ok := read(t, c, time.Now().Add(recvTimeout))
	if !ok {
		t.Fatalf("%s: %q did not arrive within %v", c.LocalAddr(), msg, recvTimeout)
	}
	if got != msg {
		t.Fatalf("%s: got %q from %s, want %q", c.LocalAddr(), got, from, msg)
	}
	return from
}

// mustNotRecv checks that nothing but marker reaches c: it waits for the
// marker (sent by the caller after the packets that must be blocked, along
// a path known to be open) and a short grace time after it.
func mustNotRecv(t *testing.T, c *net.UDPConn, marker string) {
	t.Helper()
	mustRecv(t, c, marker)
	if got, from, ok := read(t, c, time.Now().Add(grace)); ok {
		t.Fatalf("%s: %q from %s got in, want it blocked", c.LocalAddr(), got, from)
	}
}

// TestEndpointIndependent: plain MASQUERADE keeps one public ip:port per
// socket for every destination (and keeps the source port), and lets in
// only the exact ip:port the client has sent to.
func TestEndpointIndependent(t *testing.T) {
	t.Parallel()
	l := natlab.New(t, natlab.Options{})
	pub1, pub2, pub3 := l.Public(1), l.Public(2), l.Public(3)
	c := listen(t, l.Client(), "198.18.0.2:0")
	p1 := listen(t, pub1, pub1.AddrPort4(7000).String())
	p1b := listen(t, pub1, pub1.AddrPort4(7001).String())
	p2 := listen(t, pub2, pub2.AddrPort4(7000).String())
	p2b := listen(t, pub2, pub2.AddrPort4(7001).String())
	p3 := listen(t, pub3, pub3.AddrPort4(7000).String())

	send(t, c, pub1.AddrPort4(7000), "punch1")
	m1 := mustRecv(t, p1, "punch1")
	if want := netip.AddrPortFrom(l.WANAddr(), port(c)); m1 != want {
		t.Fatalf("pub1 sees the client as %s, want %s (WAN address, source port kept)", m1, want)
	}

	// Filtering: only pub1:7000 may answer.
	send(t, p1b, m1, "pub1 other port")
	send(t, p2b, m1, "pub2 not contacted")
	send(t, p3, m1, "pub3 not contacted")
	send(t, p1, netip.AddrPortFrom(l.Client().IPv4, port(c)), "straight to the private address")
	send(t, p1, m1, "marker")
	mustNotRecv(t, c, "marker")

	// Mapping: pub2 sees the same public ip:port and, once contacted, gets in.
	send(t, c, pub2.AddrPort4(7000), "punch2")
	if m2 := mustRecv(t, p2, "punch2"); m2 != m1 {
		t.Fatalf("pub2 sees %s, pub1 saw %s: mapping is not endpoint-independent", m2, m1)
	}
	send(t, p2, m1, "reply2")
	if from := mustRecv(t, c, "reply2"); from != pub2.AddrPort4(7000) {
		t.Fatalf("reply from %s, want %s", from, pub2.AddrPort4(7000))
	}
}

// TestSymmetric: --random-fully maps each destination to its own port; the
// port one public host learns is useless to another, but a reply to where a
// packet came from gets in.
func TestSymmetric(t *testing.T) {
	t.Parallel()
	l := natlab.New(t, natlab.Options{NAT: natlab.Symmetric})
	pub1, pub2 := l.Public(1), l.Public(2)
	c := listen(t, l.Client(), "198.18.0.2:0")
	p1 := listen(t, pub1, pub1.AddrPort4(7000).String())
	p2 := listen(t, pub2, pub2.AddrPort4(7000).String())

	send(t, c, pub1.AddrPort4(7000), "punch1")
	m1 := mustRecv(t, p1, "punch1")
	send(t, c, pub2.AddrPort4(7000), "punch2")
	m2 := mustRecv(t, p2, "punch2")
	if m1.Addr() != l.WANAddr() || m2.Addr() != l.WANAddr() {
		t.Fatalf("seen as %s and %s, want the WAN address %s", m1, m2, l.WANAddr())
	}
	if m1.Port() == m2.Port() {
		t.Fatalf("pub1 and pub2 both see port %d: mapping is not symmetric", m1.Port())
	}
	send(t, p1, m2, "pub1 to the port pub2 learned")
	send(t, p2, m2, "marker")
	mustNotRecv(t, c, "marker")
	send(t, p1, m1, "reply1")
	mustRecv(t, c, "reply1")
}

// TestFlushConntrack: after the NAT forgets its mappings nothing gets in
// until the client sends again; the blocked packet leaves a stray conntrack
// entry, so the client's next packet to that peer gets a new public port,
// and a reply to that observed address gets in.
func TestFlushConntrack(t *testing.T) {
	t.Parallel()
	l := natlab.New(t, natlab.Options{})
	pub1, pub2 := l.Public(1), l.Public(2)
	c := listen(t, l.Client(), "198.18.0.2:0")
	p1 := listen(t, pub1, pub1.AddrPort4(7000).String())
	p2 := listen(t, pub2, pub2.AddrPort4(7000).String())

	send(t, c, pub1.AddrPort4(7000), "punch1")
	m1 := mustRecv(t, p1, "punch1")
	send(t, p1, m1, "reply1")
	mustRecv(t, c, "reply1")

	if err := l.FlushConntrack(); err != nil {
		t.Fatal(err)
	}
	send(t, p1, m1, "after flush")
	// A fresh punch to pub2 opens a path for the marker.
	send(t, c, pub2.AddrPort4(7000), "punch2")
	m2 := mustRecv(t, p2, "punch2")
	send(t, p2, m2, "marker")
	mustNotRecv(t, c, "marker")

	send(t, c, pub1.AddrPort4(7000), "punch1 again")
	m1b := mustRecv(t, p1, "punch1 again")
	if m1b.Port() == m1.Port() {
		t.Errorf("after a blocked inbound packet the client kept port %d for pub1; "+
			"NAT-NOTES measured a new port (stray conntrack entry)", m1.Port())
	}
	t.Logf("pub1 saw %s before the flush and %s after; pub2 sees %s", m1, m1b, m2)
	send(t, p1, m1b, "reply to observed")
	mustRecv(t, c, "reply to observed")
}

// TestStrayEntry: a packet that reaches the NAT before the client's punch
// makes the punch to that peer use a new public port (the order problem
// for dial-back), while other peers still see the preserved port.
func TestStrayEntry(t *testing.T) {
	t.Parallel()
	l := natlab.New(t, natlab.Options{})
	pub1, pub2 := l.Public(1), l.Public(2)
	c := listen(t, l.Client(), "198.18.0.2:0")
	p1 := listen(t, pub1, pub1.AddrPort4(7000).String())
	p2 := listen(t, pub2, pub2.AddrPort4(7000).String())
	predicted := netip.AddrPortFrom(l.WANAddr(), port(c))

	send(t, p1, predicted, "too early")
	send(t, c, pub2.AddrPort4(7000), "punch2")
	if m2 := mustRecv(t, p2, "punch2"); m2 != predicted {
		t.Fatalf("pub2 sees %s, want %s", m2, predicted)
	}
	send(t, p2, predicted, "marker")
	mustNotRecv(t, c, "marker")
	send(t, c, pub1.AddrPort4(7000), "punch1")
	if m1 := mustRecv(t, p1, "punch1"); m1 == predicted {
		t.Fatalf("pub1 sees %s despite its early packet; NAT-NOTES measured a new port", m1)
	}
}

// TestUDPTimeout: the nat namespace's UDP conntrack timeout is settable and
// an idle mapping disappears after it.
func TestUDPTimeout(t *testing.T) {
	t.Parallel()
	l := natlab.New(t, natlab.Options{UDPTimeout: 1500 * time.Millisecond})
	if to, stream, err := l.UDPTimeout(); err != nil || to != 2*time.Second || stream != 2*time.Second {
		t.Fatalf("UDPTimeout() = %v, %v, %v; want 2s, 2s (1.5s rounded up)", to, stream, err)
	}
	pub1 := l.Public(1)
	c := listen(t, l.Client(), "198.18.0.2:0")
	p1 := listen(t, pub1, pub1.AddrPort4(7000).String())
	send(t, c, pub1.AddrPort4(7000), "punch")
	m1 := mustRecv(t, p1, "punch")
	send(t, p1, m1, "reply")
	mustRecv(t, c, "reply")

	entry := "sport=" + strconv.Itoa(int(port(c))) + " dport=7000"
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for {
		ct, err := l.Conntrack(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(ct, entry) {
			break
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("mapping still there after 10s with a 2s timeout:\n%s", ct)
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
	send(t, p1, m1, "after expiry")
	if got, _, ok := read(t, c, time.Now().Add(300*time.Millisecond)); ok {
		t.Fatalf("%q got in through an expired mapping", got)
	}

	if err := l.NAT().SetSysctl("net.netfilter.nf_conntrack_udp_timeout", "7"); err != nil {
		t.Fatal(err)
	}
	if v, err := l.NAT().Sysctl("net.netfilter.nf_conntrack_udp_timeout"); err != nil || v != "7" {
		t.Fatalf("Sysctl = %q, %v; want 7", v, err)
	}
	if v, err := l.Client().Sysctl("net.netfilter.nf_conntrack_udp_timeout"); err != nil || v == "7" {
		t.Fatalf("client's udp timeout = %q, %v; the nat's must not leak into other namespaces", v, err)
	}
	if err := l.NAT().SetSysctl("kernel.hostname", "x"); err == nil {
		t.Fatal("SetSysctl accepted a global kernel.* key")
	}
	if err := l.SetUDPTimeout(0); err != nil {
		t.Fatal(err)
	}
	if to, _, err := l.UDPTimeout(); err != nil || to <= 2*time.Second {
		t.Fatalf("after SetUDPTimeout(0): %v, %v; want the kernel default", to, err)
	}
}

// TestIPv6Firewall: routed IPv6 without translation, but new inbound
// traffic is dropped until the client has sent to that exact ip:port.
func TestIPv6Firewall(t *testing.T) {
	t.Parallel()
	l := natlab.New(t, natlab.Options{IPv6: natlab.IPv6Firewall})
	cl, pub1, pub2 := l.Client(), l.Public(1), l.Public(2)
	c := listen(t, cl, cl.AddrPort6(0).String())
	p1 := listen(t, pub1, pub1.AddrPort6(7000).String())
	p1b := listen(t, pub1, pub1.AddrPort6(7001).String())
	p2 := listen(t, pub2, pub2.AddrPort6(7000).String())
	self := cl.AddrPort6(port(c))

	send(t, c, pub2.AddrPort6(7000), "punch2")
	if m2 := mustRecv(t, p2, "punch2"); m2 != self {
		t.Fatalf("pub2 sees %s, want the untranslated %s", m2, self)
	}
	send(t, p1, self, "unsolicited")
	send(t, p2, self, "marker")
	mustNotRecv(t, c, "marker")

	send(t, c, pub1.AddrPort6(7000), "punch1")
	mustRecv(t, p1, "punch1")
	send(t, p1b, self, "pub1 other port")
	send(t, p1, self, "reply1")
	mustNotRecv(t, c, "reply1")
}

// TestNAT66: ip6tables MASQUERADE translates the LAN prefix to the WAN
// address; the LAN prefix itself is unreachable from outside.
func TestNAT66(t *testing.T) {
	t.Parallel()
	l := natlab.New(t, natlab.Options{IPv6: natlab.IPv6NAT66})
	cl, pub1, pub2 := l.Client(), l.Public(1), l.Public(2)
	c := listen(t, cl, cl.AddrPort6(0).String())
	p1 := listen(t, pub1, pub1.AddrPort6(7000).String())
	p2 := listen(t, pub2, pub2.AddrPort6(7000).String())

	send(t, c, pub1.AddrPort6(7000), "punch1")
	m1 := mustRecv(t, p1, "punch1")
	if want := netip.AddrPortFrom(l.WANAddr6(), port(c)); m1 != want {
		t.Fatalf("pub1 sees %s, want %s (translated, port kept)", m1, want)
	}
	send(t, p2, m1, "pub2 not contacted")
	send(t, p2, cl.AddrPort6(port(c)), "straight to the private address")
	send(t, p1, m1, "marker")
	mustNotRecv(t, c, "marker")
}

// TestTCPAndProcesses: a TCP connection through the NAT comes from the WAN
// address; background processes report output and exit status.
func TestTCPAndProcesses(t *testing.T) {
	t.Parallel()
	l := natlab.New(t, natlab.Options{PublicHosts: 1})
	pub1 := l.Public(1)
	ln, err := pub1.ListenTCP(pub1.AddrPort4(8080).String())
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := l.Client().DialTCP(t.Context(), pub1.AddrPort4(8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer sc.Close()
	if from := sc.RemoteAddr().(*net.TCPAddr).AddrPort(); from.Addr() != l.WANAddr() {
		t.Fatalf("TCP connection from %s, want the WAN address %s", from, l.WANAddr())
	}

	p := l.Client().Start(t, "sh", "-c", "echo out; echo err >&2; exit 3")
	var ee *osexec.ExitError
	if err := p.Wait(t.Context()); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Wait = %v, want exit status 3", err)
	}
	if out := p.Output(); !strings.Contains(out, "out") || !strings.Contains(out, "err") {
		t.Fatalf("Output = %q", out)
	}
	p = l.Client().Start(t, "sleep", "60")
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop = %v, want nil for a process ended by SIGTERM", err)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
}

// TestLifecycle: hosts, commands, processes and RemoveHost; nothing touches
// the root namespace, and cleanup leaves no namespace or process behind.
func TestLifecycle(t *testing.T) {
	rootBefore := rootLinks(t)
	var prefix string
	var pid int
	t.Run("lab", func(t *testing.T) {
		l := natlab.New(t, natlab.Options{PublicHosts: 2})
		prefix = l.Prefix()
		if got := netnsList(t, prefix); len(got) != 5 {
			t.Fatalf("namespaces %v, want 5 (client, nat, internet, pub1, pub2)", got)
		}
		if got := rootLinks(t); got != rootBefore {
			t.Fatalf("root namespace links changed:\n%s\nwas:\n%s", got, rootBefore)
		}
		out := command(t, l.Client(), "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if !strings.Contains(out, "198.18.0.2/24") {
			t.Fatalf("client addresses: %s", out)
		}
		for _, h := range []*natlab.Host{l.Public(1), l.Public(2), l.Internet()} {
			if out := command(t, h, "ip", "-4", "route"); strings.Contains(out, "198.18.") {
				t.Fatalf("%s has a route to the private LAN:\n%s", h, out)
			}
		}
		if out := command(t, l.Internet(), "ip", "route", "show", "default"); strings.TrimSpace(out) != "" {
			t.Fatalf("internet has a default route: %s", out)
		}

		p := l.Public(1).Start(t, "sh", "-c", "echo ready; exec sleep 60")
		pid = p.Pid()
		waitOutput(t, p, "ready")

		c := listen(t, l.Client(), ":0")
		if err := l.RemoveHost(l.Client()); err != nil {
			t.Fatal(err)
		}
		if got := netnsList(t, prefix); len(got) != 4 {
			t.Fatalf("after RemoveHost(client): %v", got)
		}
		if _, _, err := c.ReadFromUDPAddrPort(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("client socket after RemoveHost: %v, want net.ErrClosed", err)
		}
		if _, err := l.Client().ListenUDP(":0"); !errors.Is(err, natlab.ErrHostRemoved) {
			t.Fatalf("ListenUDP on a removed host: %v", err)
		}
		if out, err := l.NAT().Command(t.Context(), "ip", "link", "show", "lan").CombinedOutput(); err == nil {
			t.Fatalf("nat's lan link survived the client: %s", out)
		}
	})
	if left := netnsList(t, prefix); len(left) != 0 {
		t.Fatalf("namespaces left after cleanup: %v", left)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("process %d still exists after cleanup: %v", pid, err)
	}
	if got := rootLinks(t); got != rootBefore {
		t.Fatalf("root namespace links changed:\n%s\nwas:\n%s", got, rootBefore)
	}
}

// TestSweep: stale namespaces of a dead process go, those of a live one stay.
func TestSweep(t *testing.T) {
	requireRoot(t)
	dead := exitedPid(t)
	stale := []string{
		"qlab-" + strconv.Itoa(dead) + "-1-a",
		"qlab-" + strconv.Itoa(dead) + "-1-b",
	}
	live := "qlab-" + strconv.Itoa(os.Getpid()) + "-999999-keep"
	for _, ns := range append(stale, live) {
		ipCmd(t, "netns", "add", ns)
		t.Cleanup(func() { _, _ = runCmd(t, "ip", "netns", "del", ns) })
	}
	ipCmd(t, "-n", stale[0], "link", "add", "x", "type", "veth", "peer", "name", "y", "netns", stale[1])
	if err := natlab.Sweep(); err != nil {
		t.Fatal(err)
	}
	got := netnsList(t, "qlab-")
	for _, ns := range stale {
		if slices.Contains(got, ns) {
			t.Errorf("stale %s survived Sweep", ns)
		}
	}
	if !slices.Contains(got, live) {
		t.Errorf("Sweep removed %s of a live process", live)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("natlab tests need root; CI is set, so this is a failure")
	}
	t.Skip("natlab tests need root")
}

// runCmd runs a command (in the root namespace, only for ip netns
// bookkeeping) and returns its combined output.
func runCmd(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := osexec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func ipCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runCmd(t, "ip", args...)
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// netnsList returns the `ip netns list` names starting with prefix.
func netnsList(t *testing.T, prefix string) []string {
	t.Helper()
	var names []string
	for line := range strings.Lines(ipCmd(t, "netns", "list")) {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names
}

// rootLinks describes the root namespace's interfaces.
func rootLinks(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, i := range ifs {
		b.WriteString(strconv.Itoa(i.Index) + ":" + i.Name + " ")
	}
	return b.String()
}

// command runs name in h's namespace and returns its output.
func command(t *testing.T, h *natlab.Host, name string, args ...string) string {
	t.Helper()
	out, err := h.Command(t.Context(), name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s in %s: %v: %s", name, h, err, out)
	}
	return string(out)
}

// waitOutput waits until p has written want.
func waitOutput(t *testing.T, p *natlab.Process, want string) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(recvTimeout)
	for !strings.Contains(p.Output(), want) {
		select {
		case <-tick.C:
		case <-p.Done():
			t.Fatalf("process exited before writing %q: %q", want, p.Output())
		case <-deadline:
			t.Fatalf("process did not write %q within %v: %q", want, recvTimeout, p.Output())
		}
	}
}

// exitedPid returns the id of a process that has exited and been reaped.
func exitedPid(t *testing.T) int {
	t.Helper()
	cmd := osexec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// TestRemapPorts: after RemapPorts the client's next packets leave on a new
// public port in 20000-29999, the same one for every peer behind the
// endpoint-independent NAT, and replies to it get in.
func TestRemapPorts(t *testing.T) {
	t.Parallel()
	l := natlab.New(t, natlab.Options{})
	pub1, pub2 := l.Public(1), l.Public(2)
	c := listen(t, l.Client(), "198.18.0.2:0")
	p1 := listen(t, pub1, pub1.AddrPort4(7000).String())
	p2 := listen(t, pub2, pub2.AddrPort4(7000).String())

	send(t, c, pub1.AddrPort4(7000), "before")
	before := mustRecv(t, p1, "before")
	if err := l.RemapPorts(); err != nil {
		t.Fatal(err)
	}
	send(t, c, pub1.AddrPort4(7000), "after1")
	after1 := mustRecv(t, p1, "after1")
	send(t, c, pub2.AddrPort4(7000), "after2")
	after2 := mustRecv(t, p2, "after2")
	if after1 == before || after1.Port() < 20000 || after1.Port() > 29999 {
		t.Errorf("pub1 saw %s before and %s after the remap, want a new port in 20000-29999", before, after1)
	}
	if after2 != after1 {
		t.Errorf("pub2 sees %s, pub1 %s: the remapped NAT should still map every peer alike", after2, after1)
	}
	send(t, p1, after1, "reply")
	mustRecv(t, c, "reply")
}
