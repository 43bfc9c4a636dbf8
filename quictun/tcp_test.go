package quictun

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-yamux/v5"
	"github.com/quic-go/quic-go"
)

// netipRemote is a public client of a reverse session.
var netipRemote = netip.MustParseAddrPort("203.0.113.5:5555")

// echoOver sends 1 MiB through conn to an echo target and checks it all
// comes back, then the end.
func echoOver(t *testing.T, conn *StreamConn) {
	t.Helper()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	go func() {
		conn.Write(payload)
		conn.CloseWrite()
	}()
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("echo mismatch: got %d bytes, want %d", len(got), len(payload))
	}
}

func TestTCPTransport(t *testing.T) {
	for _, fast := range []bool{false, true} {
		for _, host := range []string{"127.0.0.1", "::1"} {
			t.Run(fmt.Sprintf("%s/fast_open=%v", host, fast), func(t *testing.T) {
				reg := newMapRegistry()
				app := echoServer(t, host)
				h := newHarness(t, harnessOpts{host: host, via: TransportTCP,
					serverMod: func(c *ServerConfig) { c.Services = reg },
					clientMod: func(c *ClientConfig) {
						c.FastOpen = fast
						c.Services = []ExposedService{{Kind: ServiceTCP, Name: "app", Local: app}}
					}})
				target := echoServer(t, host)
				conn, err := h.client.Dial(t.Context(), target)
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				echoOver(t, conn)
				conn.Close()

				// Reverse: coordinator opens the stream on the client's
				// TCP connection.
				waitRegistered(t, h.client, 1)
				rc, err := reg.get("app").Dial(t.Context(), netipRemote)
				if err != nil {
					t.Fatalf("reverse Dial: %v", err)
				}
				echoOver(t, rc)
				rc.Close()

				// A refused target still says why, over TCP.
				ln, _ := net.Listen("tcp", net.JoinHostPort(host, "0"))
				dead := ln.Addr().String()
				ln.Close()
				var se *SessionError
				if c, err := h.client.Dial(t.Context(), dead); err == nil {
					_, err = c.Read(make([]byte, 1))
					c.Close()
					if !errors.As(err, &se) || se.Code != CodeTargetUnreachable {
						t.Fatalf("dead target: %v, want CodeTargetUnreachable", err)
					}
				} else if !errors.As(err, &se) || se.Code != CodeTargetUnreachable {
					t.Fatalf("dead target: %v, want CodeTargetUnreachable", err)
				}

				if st := h.client.Stats(); st.Transport != TransportTCP || st.TransportWhy != "" || !st.Connected {
					t.Errorf("client stats: transport %q (%q), connected %v", st.Transport, st.TransportWhy, st.Connected)
				}
				st := h.server.Stats()
				if st.DialBackSessions != 0 || st.DialBackDials != 0 || st.Sessions != 1 || st.RelaySessions+st.FastOpenSessions != 1 {
					t.Errorf("server stats = %+v: want 1 forward session, over the client's connection", st)
				}
			})
		}
	}
}

func TestTCPTransportTokenRefused(t *testing.T) {
	h := newHarness(t, harnessOpts{via: TransportTCP, clientToken: "wrong"})
	select {
	case err := <-h.clientErr:
		h.clientErr <- err // for the cleanup
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("Run = %v, want ErrAuthFailed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("client still running with a refused token")
	}
}

// TestAutoFallsBackToTCP: coordinator's UDP port swallows every packet
// (as behind a firewall that drops UDP), or answers none (nothing
// listening): auto connects over TCP soon after QUICFallback and says why.
func TestAutoFallsBackToTCP(t *testing.T) {
	for _, blocked := range []string{"dropped", "rejected"} {
		t.Run(blocked, func(t *testing.T) {
			pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			hole := pc.LocalAddr().String()
			if blocked == "rejected" {
				pc.Close() // the port is closed: ICMP port unreachable
			} else {
				defer pc.Close() // never read
			}
			start := time.Now()
			h := newHarness(t, harnessOpts{via: TransportAuto, clientMod: func(c *ClientConfig) {
				c.Coordinator, c.QUICFallback = hole, 300*time.Millisecond
			}})
			select {
			case <-h.client.Connected():
			case <-time.After(3 * time.Second):
				t.Fatalf("not connected 3 s after start: %v", h.client.Stats())
			}
			took := time.Since(start)
			st := h.client.Stats()
			if st.Transport != TransportTCP || st.TransportWhy == "" {
				t.Fatalf("transport %q (%q), want tcp with a reason", st.Transport, st.TransportWhy)
			}
			t.Logf("connected over TCP after %s: %s", took.Round(time.Millisecond), st.TransportWhy)
			conn, err := h.client.Dial(t.Context(), echoServer(t, "127.0.0.1"))
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			echoOver(t, conn)
			conn.Close()
		})
	}
}

// TestAutoPrefersQUIC: with both open, auto uses QUIC.
func TestAutoPrefersQUIC(t *testing.T) {
	h := newHarness(t, harnessOpts{via: TransportAuto})
	<-h.client.Connected()
	if st := h.client.Stats(); st.Transport != TransportQUIC {
		t.Fatalf("transport %q, want quic", st.Transport)
	}
}

// TestTCPListenerBadInput throws what a stranger might at the TCP
// transport: each connection is closed within HelloTimeout, the
// unauthenticated ones stay bounded, and a QUIC client meanwhile works.
func TestTCPListenerBadInput(t *testing.T) {
	const helloTimeout = 500 * time.Millisecond
	h := newHarness(t, harnessOpts{via: TransportQUIC, serverMod: func(c *ServerConfig) {
		c.HelloTimeout = helloTimeout
		c.Handshakes.Max = 8
	}})
	<-h.client.Connected()
	tlsConf := &tls.Config{RootCAs: getPKI(t).pool, ServerName: "localhost", NextProtos: []string{ALPNControl}}

	// closedWithin checks the server ends c within limit.
	closedWithin := func(t *testing.T, c net.Conn, limit time.Duration) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(limit))
		_, err := io.Copy(io.Discard, c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection still open after %s", limit)
		}
	}
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", h.tcpAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("plain HTTP", func(t *testing.T) {
		c := dial(t)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		closedWithin(t, c, 2*time.Second)
	})
	t.Run("garbage", func(t *testing.T) {
		c := dial(t)
		c.Write(bytes.Repeat([]byte{0xff, 0x00, 0x17}, 1000))
		closedWithin(t, c, 2*time.Second)
	})
	t.Run("silent", func(t *testing.T) {
		closedWithin(t, dial(t), helloTimeout+2*time.Second)
	})
	t.Run("slowloris TLS", func(t *testing.T) {
		// A ClientHello record header, then one byte now and then.
		c := dial(t)
		c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 20 {
				if _, err := c.Write([]byte{0x01}); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		closedWithin(t, c, helloTimeout+2*time.Second)
		<-done
	})
	t.Run("no hello after TLS", func(t *testing.T) {
		tc := tls.Client(dial(t), tlsConf)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		closedWithin(t, tc, helloTimeout+2*time.Second)
	})
	t.Run("malformed multiplexer frames", func(t *testing.T) {
		tc := tls.Client(dial(t), tlsConf)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		tc.Write(bytes.Repeat([]byte{0x07, 0xee}, 64)) // version 7: no yamux
		closedWithin(t, tc, 2*time.Second)
	})
	t.Run("10000 streams before hello", func(t *testing.T) {
		tc := tls.Client(dial(t), tlsConf)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		mc := yamux.DefaultConfig()
		mc.LogOutput = io.Discard
		sess, err := yamux.Client(tc, mc, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		opened := 0
		for range 10000 {
			s, err := sess.OpenStream(ctx)
			if err != nil {
				break
			}
			s.Write([]byte{0})
			opened++
		}
		select {
		case <-sess.CloseChan():
		case <-ctx.Done():
			t.Fatalf("connection still open after opening %d streams", opened)
		}
		t.Logf("closed after %d streams opened", opened)
	})
	t.Run("handshake limit", func(t *testing.T) {
		var conns []net.Conn
		for range 8 {
			conns = append(conns, dial(t))
		}
		deadline := time.Now().Add(2 * time.Second)
		for h.server.Stats().Handshakes < 8 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := h.server.Stats().Handshakes; n != 8 {
			t.Fatalf("%d unauthenticated connections counted, want 8", n)
		}
		// The ninth is closed at once.
		closedWithin(t, dial(t), helloTimeout/3) // at once, not after HelloTimeout
		if h.server.Stats().LimitHits[LimitHandshakes] == 0 {
			t.Errorf("limit hit not counted: %v", h.server.Stats().LimitHits)
		}
		for _, c := range conns {
			c.Close()
		}
	})

	// Every place is free again, and the QUIC client was not disturbed.
	deadline := time.Now().Add(3 * time.Second)
	for h.server.Stats().Handshakes != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := h.server.Stats().Handshakes; n != 0 {
		t.Errorf("%d unauthenticated connections still counted", n)
	}
	conn, err := h.client.Dial(t.Context(), echoServer(t, "127.0.0.1"))
	if err != nil {
		t.Fatalf("QUIC client after the onslaught: %v", err)
	}
	echoOver(t, conn)
	conn.Close()
	if st := h.client.Stats(); st.Connects != 1 {
		t.Errorf("QUIC client reconnected %d times meanwhile", st.Connects-1)
	}
	if n := h.server.Stats().Clients; n != 1 {
		t.Errorf("%d clients on the server, want the QUIC one", n)
	}
}

// udpGate forwards one client's UDP datagrams to a server and back, or
// drops them all while closed: a firewall that blocks UDP, then stops.
type udpGate struct {
	ln, up *net.UDPConn
	open   atomic.Bool
	client atomic.Pointer[net.UDPAddr]
	wg     sync.WaitGroup
}

func newUDPGate(t *testing.T, server string) *udpGate {
	t.Helper()
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	sa, _ := net.ResolveUDPAddr("udp", server)
	up, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, sa)
	if err != nil {
		t.Fatal(err)
	}
	g := &udpGate{ln: ln, up: up}
	g.wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := ln.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if g.open.Load() {
				g.client.Store(from)
				up.Write(buf[:n])
			}
		}
	})
	g.wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if to := g.client.Load(); to != nil && g.open.Load() {
				ln.WriteToUDP(buf[:n], to)
			}
		}
	})
	t.Cleanup(func() { ln.Close(); up.Close(); g.wg.Wait() })
	return g
}

// TestAutoMovesBackToQUIC: connected over TCP while UDP is blocked, auto
// moves new sessions to QUIC once it gets through again; a session open
// on TCP meanwhile finishes there, and then the TCP connection closes.
func TestAutoMovesBackToQUIC(t *testing.T) {
	var gate *udpGate
	h := newHarness(t, harnessOpts{via: TransportAuto, clientMod: func(c *ClientConfig) {
		c.QUICFallback, c.QUICProbe = 300*time.Millisecond, 200*time.Millisecond
		c.Coordinator = "127.0.0.1:1" // replaced below, before Run
	}, beforeRun: func(h *harness, c *ClientConfig) {
		gate = newUDPGate(t, h.serverTr.Conn.LocalAddr().String())
		c.Coordinator = gate.ln.LocalAddr().String()
	}})
	<-h.client.Connected()
	if st := h.client.Stats(); st.Transport != TransportTCP {
		t.Fatalf("transport %q, want tcp while UDP is blocked", st.Transport)
	}
	target := echoServer(t, "127.0.0.1")
	onTCP, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, onTCP, "over tcp")

	gate.open.Store(true)
	opened := time.Now()
	waitFor := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(limit); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s", what, limit)
			}
		}
	}
	waitFor("back on QUIC", 3*time.Second, func() bool { return h.client.Stats().Transport == TransportQUIC })
	t.Logf("back on QUIC %s after UDP was let through", time.Since(opened).Round(time.Millisecond))
	if st := h.client.Stats(); st.TransportWhy != "" {
		t.Errorf("still says why it used TCP: %q", st.TransportWhy)
	}

	onQUIC, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, onQUIC, "over quic")
	onQUIC.Close()
	if st := h.server.Stats(); st.DialBackSessions != 1 || st.RelaySessions != 1 {
		t.Errorf("server: %d dial-back and %d relayed sessions, want the new one over dial-back (QUIC), the old relayed (TCP)",
			st.DialBackSessions, st.RelaySessions)
	}
	// The session on TCP still works, and ends there.
	echo(t, onTCP, "still over tcp")
	if n := h.server.Stats().Clients; n != 2 {
		t.Errorf("%d clients on the server while the TCP connection has a session, want 2", n)
	}
	onTCP.Close()
	waitFor("TCP connection closed", 3*time.Second, func() bool { return h.server.Stats().Clients == 1 })
}

// muxPair is a client and a server muxConn over TLS on loopback TCP.
func muxPair(t *testing.T) (client, server Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := make(chan Conn, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			srv <- nil
			return
		}
		raw := &countingConn{Conn: nc}
		tc := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{getPKI(t).cert}})
		if tc.Handshake() != nil {
			nc.Close()
			srv <- nil
			return
		}
		c, _ := newMuxConn(context.Background(), tc, raw, true, muxConfig(100, 0))
		srv <- c
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw := &countingConn{Conn: nc}
	tc := tls.Client(raw, &tls.Config{RootCAs: getPKI(t).pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if client, err = newMuxConn(context.Background(), tc, raw, false, muxConfig(100, 0)); err != nil {
		t.Fatal(err)
	}
	if server = <-srv; server == nil {
		t.Fatal("server side failed")
	}
	t.Cleanup(func() { client.CloseWithError(0, ""); server.CloseWithError(0, "") })
	return client, server
}

// TestTCPStreamCloseAfterPeerDone: a peer that has read all it wanted and
// closed (FIN, then stop reading with CodeOK) makes a later CloseWrite no
// error, as on QUIC; a reset with another code still is one.
func TestTCPStreamCloseAfterPeerDone(t *testing.T) {
	for _, tc := range []struct {
		name    string
		code    ErrorCode
		wantErr bool
	}{{"CodeOK", CodeOK, false}, {"CodeCanceled", CodeCanceled, true}} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := muxPair(t)
			cs, err := client.OpenStreamSync(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			cs.Write([]byte("request"))
			ss, err := server.AcceptStream(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			a, b := newStreamConn(cs, client, SessionID{}), newStreamConn(ss, server, SessionID{})
			buf := make([]byte, 7)
			io.ReadFull(b, buf)
			b.Write([]byte("answer"))
			io.ReadFull(a, buf[:6])
			// The client is done: FIN, then it stops reading.
			a.CloseWrite()
			a.Stream.CancelRead(quic.StreamErrorCode(tc.code))
			if _, err := io.ReadAll(b); err != nil {
				t.Fatalf("server read: %v", err)
			}
			// Wait until the stop has arrived: a write fails.
			deadline := time.Now().Add(2 * time.Second)
			for {
				if _, err := b.Write([]byte{0}); err != nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the client's stop never arrived")
				}
				time.Sleep(5 * time.Millisecond)
			}
			err = b.CloseWrite()
			if (err != nil) != tc.wantErr {
				t.Fatalf("CloseWrite after the client stopped reading with %s: %v", tc.code, err)
			}
		})
	}
}
