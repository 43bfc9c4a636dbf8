package coordinator

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"quictunnel/quictun"
)

// dnsServer is a DNS server on loopback that answers A queries for every
// name with one address, which the test may change, and counts them.
type dnsServer struct {
	pc net.PacketConn
	mu sync.Mutex
	a  netip.Addr
	n  int // A queries answered
}

func startDNS(t testing.TB, a netip.Addr) *dnsServer {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{pc: pc, a: a}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if answer, err := s.answer(buf[:n]); err == nil {
				pc.WriteTo(answer, from)
			}
		}
	}()
	return s
}

func (s *dnsServer) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
	b.EnableCompression()
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	if q.Type == dnsmessage.TypeA {
		s.mu.Lock()
		s.n++
		a := s.a.As4()
		s.mu.Unlock()
		b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: a})
	}
	return b.Finish()
}

func (s *dnsServer) set(a netip.Addr) {
	s.mu.Lock()
	s.a = a
	s.mu.Unlock()
}

func (s *dnsServer) queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// resolver sends every lookup to s.
func (s *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "udp", s.pc.LocalAddr().String())
	}}
}

// listenOn accepts and closes connections on addr until the test ends.
func listenOn(t testing.TB, addr string) net.Listener {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}

// TestTargetDNSCache dials a name several times through the policy: DNS
// is asked once per TTL; a cached address that stops answering sends the
// name back to DNS within the same dial; a refused address stays refused
// from the cache; a negative TTL caches nothing.
func TestTargetDNSCache(t *testing.T) {
	first := listenOn(t, "127.0.0.1:0")
	port := strconv.Itoa(first.Addr().(*net.TCPAddr).Port)
	listenOn(t, "127.0.0.2:"+port) // where the name moves to
	dns := startDNS(t, netip.MustParseAddr("127.0.0.1"))

	p, err := TargetPolicy{AllowPrivate: true}.compile(nil)
	if err != nil {
		t.Fatal(err)
	}
	p.hosts.resolver = dns.resolver()
	now := time.Now()
	p.hosts.now = func() time.Time { return now }
	dial := func(policy *targetPolicy) (string, error) {
		t.Helper()
		conn, err := policy.dialer()(t.Context(), "tcp", "site.test:"+port)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		return conn.RemoteAddr().(*net.TCPAddr).IP.String(), nil
	}
	step := func(name string, policy *targetPolicy, wantIP string, wantQueries int) {
		t.Helper()
		ip, err := dial(policy)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if ip != wantIP || dns.queries() != wantQueries {
			t.Fatalf("%s: reached %s after %d A queries, want %s after %d", name, ip, dns.queries(), wantIP, wantQueries)
		}
	}
	step("first dial", p, "127.0.0.1", 1)
	step("second dial", p, "127.0.0.1", 1)
	now = now.Add(DefaultDNSCacheTTL - time.Second)
	step("within the TTL", p, "127.0.0.1", 1)
	now = now.Add(time.Second)
	step("TTL over", p, "127.0.0.1", 2)

	dns.set(netip.MustParseAddr("127.0.0.2"))
	step("moved, cached address still answers", p, "127.0.0.1", 2)
	first.Close()
	step("cached address refuses", p, "127.0.0.2", 3)
	step("new address cached", p, "127.0.0.2", 3)
	if got := p.hosts.counts(); got["cache"] != 5 || got["dns"] != 3 {
		t.Fatalf("counted %v, want 5 from the cache and 3 from DNS", got)
	}

	strict, err := TargetPolicy{}.compile(nil)
	if err != nil {
		t.Fatal(err)
	}
	strict.hosts.resolver = dns.resolver()
	before := dns.queries()
	for range 3 {
		if _, err := dial(strict); !errors.Is(err, quictun.ErrTargetForbidden) {
			t.Fatalf("name resolving to loopback under the default policy: %v, want ErrTargetForbidden", err)
		}
	}
	if n := dns.queries() - before; n != 1 {
		t.Fatalf("three refused dials of a name asked DNS %d times, want once", n)
	}

	uncached, err := TargetPolicy{AllowPrivate: true, DNSCacheTTL: -1}.compile(nil)
	if err != nil {
		t.Fatal(err)
	}
	uncached.hosts.resolver = dns.resolver()
	before = dns.queries()
	step("no cache", uncached, "127.0.0.2", before+1)
	step("no cache again", uncached, "127.0.0.2", before+2)
}

// TestDialNameStaleAddress: a cached address that never answers (the
// name moved, the old host drops packets) leaves time for a fresh lookup,
// whose address is then dialed in the same session.
func TestDialNameStaleAddress(t *testing.T) {
	dns := startDNS(t, netip.MustParseAddr("127.0.0.2"))
	p, err := TargetPolicy{AllowPrivate: true}.compile(nil)
	if err != nil {
		t.Fatal(err)
	}
	p.hosts.resolver = dns.resolver()
	stale := netip.MustParseAddr("127.0.0.1")
	p.hosts.store("site.test", []netip.Addr{stale})
	dial := func(ctx context.Context, addrs []netip.Addr) (net.Conn, error) {
		if addrs[0] == stale {
			<-ctx.Done() // a black hole
			return nil, ctx.Err()
		}
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	conn, err := p.dialName(ctx, "tcp", "site.test", dial)
	if err != nil {
		t.Fatalf("dial with a stale cached address: %v, want the fresh address dialed", err)
	}
	conn.Close()
	if got, _, _ := p.hosts.lookup(t.Context(), "site.test"); got[0] != netip.MustParseAddr("127.0.0.2") {
		t.Fatalf("cache holds %v after the fresh lookup", got)
	}
}

// TestDialAddrs checks the Happy Eyeballs order: the first address's
// family first, the other family when it fails or is slow, and an error
// when all fail.
func TestDialAddrs(t *testing.T) {
	v6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	v6.Close()
	ln := listenOn(t, "[::1]:0")
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	listenOn(t, "127.0.0.1:"+strconv.Itoa(int(port)))
	closed := listenOn(t, "127.0.0.3:"+strconv.Itoa(int(port)))
	closed.Close()

	tests := []struct {
		name  string
		addrs string
		want  string // address reached; "" for an error
	}{
		{"IPv6 first", "::1 127.0.0.1", "::1"},
		{"IPv4 first", "127.0.0.1 ::1", "127.0.0.1"},
		{"next of the same family", "127.0.0.3 127.0.0.1", "127.0.0.1"},
		{"other family when the first fails", "127.0.0.3 ::1", "::1"},
		{"other family when the first hangs", "127.0.0.1 ::1", "::1"},
		{"all fail", "127.0.0.3", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var addrs []netip.Addr
			for _, a := range strings.Fields(tt.addrs) {
				addrs = append(addrs, netip.MustParseAddr(a))
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			d := &net.Dialer{}
			if strings.Contains(tt.name, "hangs") {
				// IPv4 connects never finish: only the parallel start
				// of IPv6 after fallbackDelay can connect in time.
				d.ControlContext = func(ctx context.Context, _, address string, _ syscall.RawConn) error {
					if netip.MustParseAddrPort(address).Addr().Is4() {
						<-ctx.Done()
						return ctx.Err()
					}
					return nil
				}
			}
			conn, err := dialAddrs(ctx, d, addrs, port)
			if tt.want == "" {
				if err == nil {
					conn.Close()
					t.Fatal("connected, want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if got := conn.RemoteAddr().(*net.TCPAddr).IP.String(); got != tt.want {
				t.Fatalf("reached %s, want %s", got, tt.want)
			}
		})
	}
}

// BenchmarkTargetDial dials a loopback listener through the target policy
// by IP, and by name with and without the host cache. The name's DNS
// server is on loopback too, so "uncached" is the least a lookup costs:
// a real resolver adds its round trip.
func BenchmarkTargetDial(b *testing.B) {
	ln := listenOn(b, "127.0.0.1:0")
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	dns := startDNS(b, netip.MustParseAddr("127.0.0.1"))
	for _, bb := range []struct {
		name, target string
		ttl          time.Duration
	}{
		{"ip", "127.0.0.1:" + port, 0},
		{"name_cached", "site.test:" + port, 0},
		{"name_uncached", "site.test:" + port, -1},
	} {
		b.Run(bb.name, func(b *testing.B) {
			p, err := TargetPolicy{AllowPrivate: true, DNSCacheTTL: bb.ttl}.compile(nil)
			if err != nil {
				b.Fatal(err)
			}
			p.hosts.resolver = dns.resolver()
			dial := p.dialer()
			for b.Loop() {
				conn, err := dial(b.Context(), "tcp", bb.target)
				if err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
		})
	}
}
