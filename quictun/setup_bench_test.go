package quictun

import (
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// delayRelay stands between one client and a server on loopback and holds
// every UDP packet for delay each way: a path with a round trip of twice
// delay. The server sees the relay's address as the client's, as behind a
// NAT, so dial-backs cross it too.
type delayRelay struct {
	pc     *net.UDPConn
	server *net.UDPAddr
	client atomic.Pointer[net.UDPAddr]
	delay  time.Duration
}

func newDelayRelay(tb testing.TB, server string, delay time.Duration) *delayRelay {
	tb.Helper()
	saddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		tb.Fatal(err)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: saddr.IP})
	if err != nil {
		tb.Fatal(err)
	}
	r := &delayRelay{pc: pc, server: saddr, delay: delay}
	done := make(chan struct{})
	tb.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			to := r.server
			if unmapped(from) == unmapped(saddr) {
				if to = r.client.Load(); to == nil {
					continue
				}
			} else {
				r.client.Store(from)
			}
			pkt := append([]byte(nil), buf[:n]...)
			time.AfterFunc(delay, func() { pc.WriteToUDP(pkt, to) })
		}
	}()
	return r
}

func unmapped(a *net.UDPAddr) netip.AddrPort {
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (r *delayRelay) addr() string { return r.pc.LocalAddr().String() }

// BenchmarkSetupOverDelayedPath times a new session to its first byte back
// (Dial, write one byte to an echo target, read it) over a path with a
// 20 ms round trip: the round trips the protocol costs, which loopback's
// microseconds hide. Open takes two (the Open exchange, then the bytes);
// fast open one.
func BenchmarkSetupOverDelayedPath(b *testing.B) {
	const oneWay = 10 * time.Millisecond
	for _, mode := range []struct {
		name string
		fast bool
	}{{"open", false}, {"fast-open", true}} {
		b.Run(mode.name, func(b *testing.B) {
			h := newHarness(b, harnessOpts{clientMod: func(c *ClientConfig) {
				c.Coordinator = newDelayRelay(b, c.Coordinator, oneWay).addr()
				c.FastOpen = mode.fast
			}})
			target := echoServer(b, "127.0.0.1")
			for !h.client.Stats().Connected {
				time.Sleep(10 * time.Millisecond)
			}
			timeSessions(b, oneWay, func() (*StreamConn, error) { return h.client.Dial(b.Context(), target) })
		})
	}
}

// BenchmarkReverseSetupOverDelayedPath is the same for a reverse session
// (a public connection to an exposed app): Dial waits for the client's
// answer before the first byte goes (two round trips), DialEarly sends it
// right behind ReverseOpen (one).
func BenchmarkReverseSetupOverDelayedPath(b *testing.B) {
	const oneWay = 10 * time.Millisecond
	for _, mode := range []struct {
		name  string
		early bool
	}{{"dial", false}, {"dial-early", true}} {
		b.Run(mode.name, func(b *testing.B) {
			reg := newMapRegistry()
			app := echoServer(b, "127.0.0.1")
			newHarness(b, harnessOpts{
				serverMod: func(c *ServerConfig) { c.Services = reg },
				clientMod: func(c *ClientConfig) {
					c.Coordinator = newDelayRelay(b, c.Coordinator, oneWay).addr()
					c.Services = []ExposedService{{Kind: ServiceTCP, Name: "app", Local: app}}
				},
			})
			for reg.get("app") == nil {
				time.Sleep(10 * time.Millisecond)
			}
			remote := netip.MustParseAddrPort("203.0.113.5:5555")
			svc := reg.get("app")
			dial := svc.Dial
			if mode.early {
				dial = svc.DialEarly
			}
			timeSessions(b, oneWay, func() (*StreamConn, error) { return dial(b.Context(), remote) })
		})
	}
}

// timeSessions times new sessions from dial to their first byte back (one
// byte written to an echo app, read back), after one untimed session (the
// first dials back), and reports them in round trips of the path.
func timeSessions(b *testing.B, oneWay time.Duration, dial func() (*StreamConn, error)) {
	session := func() {
		conn, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte{1}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
	}
	session()
	b.ResetTimer()
	for b.Loop() {
		session()
	}
	b.ReportMetric(float64(b.Elapsed())/float64(b.N)/float64(2*oneWay), "RTTs/session")
}
