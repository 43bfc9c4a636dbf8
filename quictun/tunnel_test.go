package quictun

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testPKI is a CA and a coordinator certificate for localhost, made fresh
// for the test run.
type testPKI struct {
	pool *x509.CertPool
	cert tls.Certificate
}

var (
	pkiOnce sync.Once
	pki     testPKI
)

func getPKI(t testing.TB) testPKI {
	pkiOnce.Do(func() {
		caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		caTmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
		if err != nil {
			panic(err)
		}
		ca, _ := x509.ParseCertificate(caDER)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			panic(err)
		}
		pki.pool = x509.NewCertPool()
		pki.pool.AddCert(ca)
		pki.cert = tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
	})
	return pki
}

// newTransport returns a QUIC transport on a fresh loopback UDP socket.
func newTransport(t testing.TB, host string) *quic.Transport {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host)})
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	tr := &quic.Transport{Conn: pc}
	t.Cleanup(func() { tr.Close(); pc.Close() })
	return tr
}

// harness runs a Server and a Client on loopback under the test's context.
type harness struct {
	server    *Server
	client    *Client
	serverTr  *quic.Transport
	clientTr  *quic.Transport
	tcpAddr   string // the server's TCP transport, with harnessOpts.via
	stopSrv   context.CancelFunc
	srvDone   chan error
	clientErr chan error
}

type harnessOpts struct {
	host        string
	serverToken string
	clientToken string
	serverMod   func(*ServerConfig)
	clientMod   func(*ClientConfig)
	// refuseDialBacks: the client serves no tunnel creation service.
	refuseDialBacks bool
	// via, if set, is the client's transport (ClientConfig.Via); the
	// server then serves the TCP transport too, on tcpAddr.
	via string
	// beforeRun, if set, may change the client's configuration once the
	// server runs.
	beforeRun func(*harness, *ClientConfig)
}

func newHarness(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	if o.host == "" {
		o.host = "127.0.0.1"
	}
	if o.serverToken == "" {
		o.serverToken = "secret"
	}
	if o.clientToken == "" {
		o.clientToken = o.serverToken
	}
	h := &harness{serverTr: newTransport(t, o.host), clientTr: newTransport(t, o.host)}
	if o.via != "" {
		h.tcpAddr = net.JoinHostPort(o.host, "0")
	}
	h.startServer(t, o)
	cc := ClientConfig{
		Transport: h.clientTr, Coordinator: h.serverTr.Conn.LocalAddr().String(), Token: o.clientToken,
		RootCAs: getPKI(t).pool, ServerName: "localhost", Name: "test-client",
		PublicAddr:     h.clientTr.Conn.LocalAddr().(*net.UDPAddr).AddrPort(),
		ConnectTimeout: 2 * time.Second, ReconnectMin: 50 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
	}
	if o.via != "" {
		cc.Via, cc.CoordinatorTCP = o.via, h.tcpAddr
	}
	if o.clientMod != nil {
		o.clientMod(&cc)
	}
	if o.beforeRun != nil {
		o.beforeRun(h, &cc)
	}
	c, err := NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	c.refuseDialBacks = o.refuseDialBacks
	h.client = c
	ctx, cancel := context.WithCancel(t.Context())
	h.clientErr = make(chan error, 1)
	go func() { h.clientErr <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-h.clientErr
		h.stopServer()
	})
	return h
}

func (h *harness) startServer(t testing.TB, o harnessOpts) {
	sc := ServerConfig{Transport: h.serverTr, Certificate: getPKI(t).cert, Token: o.serverToken}
	if o.serverMod != nil {
		o.serverMod(&sc)
	}
	s, err := NewServer(sc)
	if err != nil {
		t.Fatal(err)
	}
	h.server = s
	ctx, cancel := context.WithCancel(t.Context())
	h.stopSrv = cancel
	h.srvDone = make(chan error, 1)
	if h.tcpAddr == "" {
		go func() { h.srvDone <- s.Serve(ctx) }()
		return
	}
	ln, err := net.Listen("tcp", h.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	h.tcpAddr = ln.Addr().String()
	tcpDone := make(chan error, 1)
	go func() { tcpDone <- s.ServeTCP(ctx, ln) }()
	go func() { err := s.Serve(ctx); h.srvDone <- errors.Join(err, <-tcpDone) }()
}

func (h *harness) stopServer() {
	if h.stopSrv != nil {
		h.stopSrv()
		<-h.srvDone
		h.stopSrv = nil
	}
}

// echoServer is a TCP target that echoes, and closes its write side when
// the client does (half-close).
func echoServer(t testing.TB, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	return ln.Addr().String()
}

func TestDialEcho(t *testing.T) {
	for _, fast := range []bool{false, true} {
		for _, host := range []string{"127.0.0.1", "::1"} {
			t.Run(fmt.Sprintf("%s/fast_open=%v", host, fast), func(t *testing.T) {
				h := newHarness(t, harnessOpts{host: host, clientMod: func(c *ClientConfig) { c.FastOpen = fast }})
				target := echoServer(t, host)
				conn, err := h.client.Dial(t.Context(), target)
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				defer conn.Close()
				// With fast open, written before coordinator has even read
				// the FastOpen.
				payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
				go func() {
					conn.Write(payload)
					conn.CloseWrite() // half-close: the echo server then ends
				}()
				got, err := io.ReadAll(conn)
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if sha256.Sum256(got) != sha256.Sum256(payload) {
					t.Fatalf("echo mismatch: got %d bytes, want %d", len(got), len(payload))
				}
				if len(conn.SessionID()) != 2*SessionIDSize {
					t.Errorf("SessionID() = %q", conn.SessionID())
				}
				wantFast := int64(0)
				if fast {
					wantFast = 1
				}
				if st := h.client.Stats(); st.Sessions != 1 || !st.Connected || int64(st.FastOpenSessions) != wantFast || st.PendingSessions != 0 {
					t.Errorf("client stats = %+v", st)
				}
				if st := h.server.Stats(); st.FastOpenSessions != wantFast || st.DialBackSessions != 1-wantFast {
					t.Errorf("server stats = %+v: want %d fast-open sessions and the rest over dial-back", st, wantFast)
				}
			})
		}
	}
}

func TestConcurrentSessions(t *testing.T) {
	for _, fast := range []bool{false, true} {
		t.Run(fmt.Sprintf("fast_open=%v", fast), func(t *testing.T) {
			h := newHarness(t, harnessOpts{clientMod: func(c *ClientConfig) { c.FastOpen = fast }})
			target := echoServer(t, "127.0.0.1")
			const n = 200
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i := range n {
				wg.Go(func() {
					conn, err := h.client.Dial(t.Context(), target)
					if err != nil {
						errs <- err
						return
					}
					defer conn.Close()
					msg := fmt.Appendf(nil, "session %d", i)
					conn.Write(msg)
					conn.CloseWrite()
					got, err := io.ReadAll(conn)
					if err != nil || !bytes.Equal(got, msg) {
						errs <- fmt.Errorf("session %d: got %q, %v", i, got, err)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			st := h.server.Stats()
			if st.Sessions != n {
				t.Errorf("server sessions = %d, want %d", st.Sessions, n)
			}
			if fast && st.FastOpenSessions != n {
				t.Errorf("server fast-open sessions = %d, want %d", st.FastOpenSessions, n)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	t.Run("wrong token", func(t *testing.T) {
		h := newHarness(t, harnessOpts{clientToken: "wrong"})
		select {
		case err := <-h.clientErr:
			if !errors.Is(err, ErrAuthFailed) {
				t.Fatalf("Run = %v, want ErrAuthFailed", err)
			}
			h.clientErr <- err // for cleanup
		case <-t.Context().Done():
			t.Fatal("client did not give up on a refused token")
		}
		if _, err := h.client.Dial(t.Context(), "127.0.0.1:1"); !errors.Is(err, ErrCoordinatorUnavailable) {
			t.Errorf("Dial = %v, want ErrCoordinatorUnavailable", err)
		}
		if st := h.server.Stats(); st.AuthFailures != 1 || st.Sessions != 0 {
			t.Errorf("server stats = %+v", st)
		}
	})
	t.Run("target unreachable", func(t *testing.T) {
		h := newHarness(t, harnessOpts{})
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		dead := ln.Addr().String()
		ln.Close()
		_, err := h.client.Dial(t.Context(), dead)
		var se *SessionError
		if !errors.As(err, &se) || se.Code != CodeTargetUnreachable || se.Reason == "" {
			t.Fatalf("Dial = %v, want SessionError with CodeTargetUnreachable and a reason", err)
		}
	})
	t.Run("coordinator down", func(t *testing.T) {
		h := newHarness(t, harnessOpts{clientMod: func(c *ClientConfig) { c.ConnectTimeout = 300 * time.Millisecond }})
		h.stopServer()
		// Wait until the client notices the connection is gone.
		for h.client.Stats().Connected {
			select {
			case <-t.Context().Done():
				t.Fatal("client never noticed coordinator left")
			case <-time.After(10 * time.Millisecond):
			}
		}
		_, err := h.client.Dial(t.Context(), "127.0.0.1:1")
		if !errors.Is(err, ErrCoordinatorUnavailable) {
			t.Fatalf("Dial = %v, want ErrCoordinatorUnavailable", err)
		}
	})
	t.Run("dial-back timeout", func(t *testing.T) {
		// No dial-back gets in and the relay is off, so the dial-back never
		// arrives; the client gives up after DialBackTimeout.
		h := newHarness(t, harnessOpts{
			clientMod:       func(c *ClientConfig) { c.DialBackTimeout = 300 * time.Millisecond },
			serverMod:       func(c *ServerConfig) { c.DialBackTimeout = 5 * time.Second; c.DisableRelay = true },
			refuseDialBacks: true,
		})
		target := echoServer(t, "127.0.0.1")
		_, err := h.client.Dial(t.Context(), target)
		if !errors.Is(err, ErrDialBackTimeout) {
			t.Fatalf("Dial = %v, want ErrDialBackTimeout", err)
		}
	})
}

func TestDialBackPrefersObservedAddress(t *testing.T) {
	// The reporter's view is wrong (a dead port, as behind a NAT that maps
	// per destination); coordinator dials the source address it observes
	// first, so the session gets a dial-back, not the relay.
	blackhole, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer blackhole.Close()
	h := newHarness(t, harnessOpts{
		clientMod: func(c *ClientConfig) { c.PublicAddr = blackhole.LocalAddr().(*net.UDPAddr).AddrPort() },
		serverMod: func(c *ServerConfig) { c.DialBackTimeout = 600 * time.Millisecond },
	})
	conn, err := h.client.Dial(t.Context(), echoServer(t, "127.0.0.1"))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	conn.Close()
	// coordinator counts the session once it has the client's ack.
	for deadline := time.Now().Add(5 * time.Second); h.server.Stats().DialBackSessions == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if st := h.server.Stats(); st.DialBackSessions != 1 || st.RelaySessions != 0 {
		t.Fatalf("stats %+v: want the session dialed back", st)
	}
}

func TestReconnectAfterCoordinatorRestart(t *testing.T) {
	o := harnessOpts{serverToken: "secret"}
	h := newHarness(t, o)
	target := echoServer(t, "127.0.0.1")
	roundTrip := func() error {
		conn, err := h.client.Dial(t.Context(), target)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.Write([]byte("ping"))
		conn.CloseWrite()
		got, err := io.ReadAll(conn)
		if string(got) != "ping" {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}
	h.stopServer()
	h.startServer(t, o)
	// Dial waits for the reconnect (it kicks the backoff).
	if err := roundTrip(); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if c := h.client.Stats().Connects; c < 2 {
		t.Errorf("connects = %d, want >= 2", c)
	}
}

func TestRogueDialBacksRefused(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	if _, err := h.client.Dial(t.Context(), echoServer(t, "127.0.0.1")); err != nil {
		t.Fatal(err) // ensures the client is connected and pinned
	}
	clientAddr := h.clientTr.Conn.LocalAddr()

	t.Run("stranger certificate", func(t *testing.T) {
		stranger, _, _ := newEphemeralCert()
		tr := newTransport(t, "127.0.0.1")
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		conn, err := tr.Dial(ctx, clientAddr, &tls.Config{
			Certificates: []tls.Certificate{stranger}, InsecureSkipVerify: true, NextProtos: []string{ALPNDialBack},
		}, &quic.Config{})
		if err == nil {
			// TLS 1.3: the client learns of the rejection after its Finished.
			_, err = conn.AcceptStream(ctx)
			conn.CloseWithError(0, "")
		}
		if err == nil {
			t.Fatal("a dial-back with a stranger's certificate was accepted")
		}
	})

	t.Run("unknown session", func(t *testing.T) {
		// coordinator's own certificate, but a session id nobody asked for.
		tr := newTransport(t, "127.0.0.1")
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		conn, err := tr.Dial(ctx, clientAddr, &tls.Config{
			Certificates: []tls.Certificate{getPKI(t).cert}, InsecureSkipVerify: true, NextProtos: []string{ALPNDialBack},
		}, &quic.Config{})
		if err != nil {
			t.Fatalf("dial with coordinator's certificate: %v", err)
		}
		defer conn.CloseWithError(0, "")
		s, _ := conn.OpenStreamSync(ctx)
		s.Write(AppendSessionHeader(nil, NewSessionID()))
		// The ack may or may not arrive before the reset: read to the end.
		_, err = io.ReadAll(s)
		var se *quic.StreamError
		if !errors.As(err, &se) || ErrorCode(se.ErrorCode) != CodeSessionUnknown {
			t.Fatalf("read = %v, want stream reset with CodeSessionUnknown", err)
		}
		if n := h.client.Stats().UnknownSessions; n != 1 {
			t.Errorf("UnknownSessions = %d, want 1", n)
		}
	})
}

func TestConfigValidation(t *testing.T) {
	tr := &quic.Transport{}
	tests := []struct {
		name  string
		cfg   ClientConfig
		field string
	}{
		{"no transport", ClientConfig{Coordinator: "a:1", Token: "t"}, "Transport"},
		{"no coordinator", ClientConfig{Transport: tr, Token: "t"}, "Coordinator"},
		{"bad coordinator", ClientConfig{Transport: tr, Coordinator: "nohost", Token: "t"}, "Coordinator"},
		{"no token", ClientConfig{Transport: tr, Coordinator: "a:1"}, "Token"},
		{"two services on one port", ClientConfig{Transport: tr, Coordinator: "a:1", Token: "t", Services: []ExposedService{
			{Kind: ServiceTCP, Name: "db", Port: 20001, Local: "127.0.0.1:5432"},
			{Kind: ServiceTCP, Name: "cache", Port: 20001, Local: "127.0.0.1:6379"},
		}}, "Services[cache]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewClient(tt.cfg)
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tt.field {
				t.Fatalf("NewClient = %v, want ConfigError on %s", err, tt.field)
			}
		})
	}
	if _, err := NewServer(ServerConfig{Transport: tr, Token: "t"}); err == nil {
		t.Error("NewServer without a certificate succeeded")
	}
}

func TestPublicAddrUpdate(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	target := echoServer(t, "127.0.0.1")
	live, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echo(t, live, "before")
	if err := h.client.SetPublicAddr(netip.MustParseAddrPort("127.0.0.1:9")); err != nil {
		t.Fatal(err)
	}
	// The new address is dead, but coordinator dials the observed address
	// first, so sessions keep working.
	conn, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatalf("Dial after address update: %v", err)
	}
	conn.Close()
	if st := h.client.Stats(); st.PublicAddr.Port() != 9 || st.PublicAddrChanges != 1 {
		t.Errorf("PublicAddr = %v, PublicAddrChanges = %d, want port 9 and 1 change", st.PublicAddr, st.PublicAddrChanges)
	}
	// The session opened before the change was not cut.
	echo(t, live, "after the address changed")
}

// echo writes msg on c, a session to echoServer, and reads it back.
func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo %q: got %q, %v", msg, buf, err)
	}
}

// TestCloseDialBacks: only connections accepted before the time given are
// closed; the sessions on a closed dial-back connection end at once,
// coordinator notices, and the next session gets a new dial-back
// connection.
func TestCloseDialBacks(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	target := echoServer(t, "127.0.0.1")
	before := time.Now()
	live, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echo(t, live, "first") // then coordinator has the dial-back stream's ack
	select {
	case <-h.client.DialBackAccepted():
	default:
		t.Errorf("DialBackAccepted did not signal the dial-back connection")
	}
	if n := h.client.CloseDialBacks(before, "test"); n != 0 {
		t.Fatalf("CloseDialBacks(before it was accepted) closed %d connections, want 0", n)
	}
	echo(t, live, "still there")
	if n := h.client.CloseDialBacks(time.Now(), "test"); n != 1 {
		t.Fatalf("CloseDialBacks closed %d connections, want 1", n)
	}
	live.SetReadDeadline(time.Now().Add(10 * time.Second)) // the idle timeout is 30 s
	if _, err := live.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on a session of the closed connection: %v, want it ended", err)
	}
	conn, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatalf("Dial after CloseDialBacks: %v", err)
	}
	defer conn.Close()
	echo(t, conn, "on a new dial-back connection")
	if st := h.server.Stats(); st.DialBackSessions != 2 || st.DialBackDials != 2 {
		t.Errorf("server stats = %+v: want 2 sessions over 2 dial-back connections", st)
	}
	if n := h.client.CloseDialBacks(time.Now(), "test"); n != 1 {
		t.Errorf("CloseDialBacks closed %d connections, want only the new one", n)
	}
	if n := h.client.Stats().DialBacksClosed; n != 2 {
		t.Errorf("DialBacksClosed = %d, want 2", n)
	}
}

// TestDialBackProbeKeepsLiveConnections: an idle dial-back connection
// whose peer still answers is not taken for silent (its keepalive draws
// an acknowledgement), and its session goes on.
func TestDialBackProbeKeepsLiveConnections(t *testing.T) {
	h := newHarness(t, harnessOpts{clientMod: func(c *ClientConfig) { c.KeepAlive = 200 * time.Millisecond }})
	target := echoServer(t, "127.0.0.1")
	live, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echo(t, live, "before")
	probe := h.client.ProbeDialBacks(time.Now())
	if probe.Len() != 1 {
		t.Fatalf("probe covers %d connections, want 1", probe.Len())
	}
	if none := h.client.ProbeDialBacks(time.Now().Add(-time.Hour)); none.Len() != 0 {
		t.Errorf("a probe of connections accepted an hour ago covers %d", none.Len())
	}
	time.Sleep(time.Until(probe.Ready)) // idle meanwhile: only keepalives
	if n := probe.CloseSilent("test"); n != 0 {
		t.Fatalf("CloseSilent closed %d live connections", n)
	}
	echo(t, live, "after the probe")
	if n := h.client.Stats().DialBacksClosed; n != 0 {
		t.Errorf("DialBacksClosed = %d, want 0", n)
	}
}

// TestRelayWhenDialBackFails: a client no dial-back can reach (symmetric
// NAT, inbound UDP blocked) still gets its sessions, over the relay,
// decided within RelayAfter.
func TestRelayWhenDialBackFails(t *testing.T) {
	h := newHarness(t, harnessOpts{
		serverMod:       func(c *ServerConfig) { c.RelayAfter = 500 * time.Millisecond },
		refuseDialBacks: true,
	})
	target := echoServer(t, "127.0.0.1")
	for i := range 3 {
		conn, err := h.client.Dial(t.Context(), target)
		if err != nil {
			t.Fatalf("Dial %d: %v", i, err)
		}
		msg := bytes.Repeat([]byte("relayed "), 50000)
		go func() { conn.Write(msg); conn.CloseWrite() }()
		got, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("session %d over relay: %d bytes, %v", i, len(got), err)
		}
	}
	if st := h.server.Stats(); st.DialBackDials != 1 {
		t.Errorf("coordinator dialed back %d times, want once: the relay decision should stick", st.DialBackDials)
	}
	if st := h.server.Stats(); st.RelaySessions != 3 || st.DialBackSessions != 0 {
		t.Errorf("server stats %+v, want 3 relayed sessions", st)
	}
	if st := h.client.Stats(); st.RelaySessions != 3 {
		t.Errorf("client stats %+v", st)
	}
}

// TestUntrustedCoordinator: a coordinator certificate from an unknown CA
// is refused, and the error says what to do.
func TestUntrustedCoordinator(t *testing.T) {
	h := newHarness(t, harnessOpts{clientMod: func(c *ClientConfig) {
		c.RootCAs = x509.NewCertPool() // trusts nothing
		c.ConnectTimeout = 300 * time.Millisecond
	}})
	_, err := h.client.Dial(t.Context(), "127.0.0.1:1")
	if !errors.Is(err, ErrCoordinatorUnavailable) || !errors.Is(err, ErrUntrustedCoordinator) || !strings.Contains(err.Error(), "--ca") {
		t.Fatalf("Dial = %v; want coordinator unavailable because its certificate is untrusted, naming --ca", err)
	}
	if st := h.server.Stats(); st.Sessions != 0 {
		t.Fatalf("sessions through an untrusted coordinator: %+v", st)
	}
}

// TestRelayWhenDialBackConnectionDies: a dial-back connection that went
// silent (NAT mapping lost while idle) is noticed on the next session,
// which is relayed instead of timing out.
func TestRelayWhenDialBackConnectionDies(t *testing.T) {
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.RelayAfter = 300 * time.Millisecond }})
	target := echoServer(t, "127.0.0.1")
	roundTrip := func() error {
		conn, err := h.client.Dial(t.Context(), target)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.Write([]byte("ping"))
		conn.CloseWrite()
		got, err := io.ReadAll(conn)
		if string(got) != "ping" {
			return fmt.Errorf("got %q, %v", got, err)
		}
		return nil
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}
	h.client.mu.Lock()
	h.client.dropDialBackStreams = true
	h.client.mu.Unlock()
	start := time.Now()
	if err := roundTrip(); err != nil {
		t.Fatalf("session after the dial-back went silent: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v", d)
	}
	if st := h.server.Stats(); st.RelaySessions != 1 || st.DialBackSessions != 1 {
		t.Errorf("server stats %+v: want one dial-back then one relayed session", st)
	}
}

func TestSilentCoordinatorIsGivenUp(t *testing.T) {
	// coordinator's socket closes under it without a word (a crash, a dead
	// path): a session being opened fails once nothing has come back for
	// SilenceTimeout, naming why, rather than after OpenTimeout or the QUIC
	// idle timeout.
	h := newHarness(t, harnessOpts{clientMod: func(c *ClientConfig) {
		c.SilenceTimeout = 300 * time.Millisecond
		c.OpenTimeout = time.Minute
	}})
	target := echoServer(t, "127.0.0.1")
	sc, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	sc.Close()
	h.serverTr.Conn.Close()
	// Let the packets coordinator sent before its socket closed (the
	// acknowledgements of the first session's end) be processed first: a
	// packet counted after the Open would be taken for a sign of life.
	time.Sleep(200 * time.Millisecond)
	_, err = h.client.Dial(t.Context(), target)
	if !errors.Is(err, ErrCoordinatorUnavailable) || !strings.Contains(err.Error(), "stopped answering") {
		t.Fatalf("Dial = %v, want ErrCoordinatorUnavailable saying coordinator stopped answering", err)
	}
}

// slowDialer dials targets after waiting d, like a slow target network.
func slowDialer(d time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
}

func TestSlowTargetIsNotSilence(t *testing.T) {
	// A target that takes longer than SilenceTimeout to answer is not a
	// dead coordinator: coordinator acknowledges the Open meanwhile (over
	// TCP, yamux's acknowledgement of the new stream).
	for _, via := range []string{TransportQUIC, TransportTCP} {
		t.Run(via, func(t *testing.T) {
			h := newHarness(t, harnessOpts{via: via,
				clientMod: func(c *ClientConfig) { c.SilenceTimeout = 100 * time.Millisecond },
				serverMod: func(c *ServerConfig) {
					c.DialTarget = slowDialer(time.Second)
				},
			})
			sc, err := h.client.Dial(t.Context(), echoServer(t, "127.0.0.1"))
			if err != nil {
				t.Fatalf("Dial through a slow target: %v", err)
			}
			sc.Close()
		})
	}
}

// TestSessionsResetAtOnceKeepTheDialBack: sessions a browser abandons as
// soon as they are open (Reset: the dial-back stream's ack may not have
// left yet) cost only themselves: the dial-back connection stays, no
// session is moved to the relay, and the next one goes over dial-back.
func TestSessionsResetAtOnceKeepTheDialBack(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	target := echoServer(t, "127.0.0.1")
	const n = 200
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if conn, err := h.client.Dial(t.Context(), target); err == nil {
				conn.Reset()
				conn.Close()
			}
		})
	}
	wg.Wait()
	conn, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, conn, "after")
	conn.Close()
	if st := h.server.Stats(); st.DialBackDials != 1 || st.DialBackErrors != 0 || st.RelaySessions != 0 {
		t.Errorf("server stats %+v: want one dial-back connection, no session relayed", st)
	}
}
