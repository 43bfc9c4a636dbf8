package natt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v2"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startServer serves a Server on a fresh UDP socket on host.
func startServer(t *testing.T, host string, cfg ServerConfig) (*Server, netip.AddrPort) {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		pc.Close()
	})
	return s, pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// clientSocket is a UDP socket driving a Client, as localproxy does.
type clientSocket struct {
	pc     *net.UDPConn
	client *Client
	drop   atomic.Int32 // requests to drop before sending
	done   chan struct{}
}

func newClientSocket(t *testing.T, host string) *clientSocket {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host)})
	if err != nil {
		t.Fatal(err)
	}
	cs := &clientSocket{pc: pc, done: make(chan struct{})}
	cs.client, err = NewClient(ClientConfig{
		RTO: 20 * time.Millisecond,
		Send: func(b []byte, to netip.AddrPort) (int, error) {
			if cs.drop.Add(-1) >= 0 {
				return len(b), nil
			}
			return pc.WriteToUDPAddrPort(b, to)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(cs.done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			cs.client.HandlePacket(buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()))
		}
	}()
	t.Cleanup(func() { pc.Close(); <-cs.done; cs.client.Close() })
	return cs
}

func (cs *clientSocket) addr() netip.AddrPort { return cs.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

func TestQuery(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			_, server := startServer(t, host, ServerConfig{})
			cs := newClientSocket(t, host)
			got, err := cs.client.Query(t.Context(), server)
			if err != nil {
				t.Fatal(err)
			}
			if got != cs.addr() {
				t.Fatalf("mapped address %v, want %v", got, cs.addr())
			}
		})
	}
}

// TestQueryFiltering: a reporter with a probe port answers change-port
// requests from it; loopback filters nothing, so the answer gets in. A
// reporter without one cannot tell, and says so.
func TestQueryFiltering(t *testing.T) {
	s, err := NewServer(ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeWithProbe(ctx, pc, probe) }()
	t.Cleanup(func() { cancel(); <-done; pc.Close(); probe.Close() })

	cs := newClientSocket(t, "127.0.0.1")
	server := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	if got, err := cs.client.QueryFiltering(t.Context(), server); got != FilteringOpen || err != nil {
		t.Errorf("QueryFiltering with a probe port = %v, %v; want open", got, err)
	}
	_, plain := startServer(t, "127.0.0.1", ServerConfig{})
	if got, err := cs.client.QueryFiltering(t.Context(), plain); got != FilteringUnknown || err == nil {
		t.Errorf("QueryFiltering without a probe port = %v, %v; want unknown with an error", got, err)
	}
	// Nobody answers at all: the client cannot tell silence from
	// filtering, so callers probe only a reporter that just answered.
	dead, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer dead.Close()
	if got, _ := cs.client.QueryFiltering(t.Context(), dead.LocalAddr().(*net.UDPAddr).AddrPort()); got != FilteringRestricted {
		t.Errorf("QueryFiltering of a silent server = %v, want restricted", got)
	}
}

func TestQueryRetransmits(t *testing.T) {
	_, server := startServer(t, "127.0.0.1", ServerConfig{})
	cs := newClientSocket(t, "127.0.0.1")
	cs.drop.Store(2) // the first two requests are lost
	if _, err := cs.client.Query(t.Context(), server); err != nil {
		t.Fatalf("Query after losses: %v", err)
	}
}

func TestQueryNoServer(t *testing.T) {
	dead, _ := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	defer dead.Close() // bound but silent
	cs := newClientSocket(t, "127.0.0.1")
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err := cs.client.Query(ctx, dead.LocalAddr().(*net.UDPAddr).AddrPort())
	if !errors.Is(err, ErrNoResponse) {
		t.Fatalf("Query = %v, want ErrNoResponse", err)
	}
}

func TestIsSTUN(t *testing.T) {
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw
	tests := []struct {
		name string
		b    []byte
		want bool
	}{
		{"binding request", req, true},
		{"truncated", req[:len(req)-1], false},
		{"short", req[:19], false},
		{"QUIC long header", append([]byte{0xc3}, req[1:]...), false},
		{"QUIC short header", append([]byte{0x40}, req[1:]...), false},
		{"bad cookie", append(append([]byte{}, req[:4]...), append([]byte{1, 2, 3, 4}, req[8:]...)...), false},
		{"empty", nil, false},
	}
	for _, tt := range tests {
		if got := IsSTUN(tt.b); got != tt.want {
			t.Errorf("%s: IsSTUN = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// RFC 5769 §2.2 and §2.3: sample responses with XOR-MAPPED-ADDRESS. The
// addresses are the RFC's test-vector data, decoded only; nothing is sent.
func TestRFC5769Vectors(t *testing.T) {
	tests := []struct {
		name string
		raw  []byte
		want netip.AddrPort
	}{
		{"IPv4 response", rfc5769IPv4Response(), netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, 1}), 32853)},
		{"IPv6 response", rfc5769IPv6Response(), netip.MustParseAddrPort("[2001:db8:1234:5678:11:2233:4455:6677]:32853")},
	}
	for _, tt := range tests {
		if !IsSTUN(tt.raw) {
			t.Fatalf("%s: not recognised as STUN", tt.name)
		}
		m := &stun.Message{Raw: tt.raw}
		if err := m.Decode(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if err := stun.Fingerprint.Check(m); err != nil {
			t.Errorf("%s: fingerprint: %v", tt.name, err)
		}
		got, err := mappedAddress(m)
		if err != nil || got != tt.want {
			t.Errorf("%s: mapped %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
}

// rfc5769IPv4Response is the RFC 5769 §2.2 sample response.
func rfc5769IPv4Response() []byte {
	return mustHex("0101003c" + "2112a442" + "b7e7a701bc34d686fa87dfae" +
		"8022000b" + "7465737420766563746f7220" +
		"00200008" + "0001a147" + "e112a643" +
		"00080014" + "2b91f599fd9e90c38c7489f92af9ba53f06be7d7" +
		"80280004" + "c07d4c96")
}

func mustHex(h string) []byte {
	b, err := hex.DecodeString(h)
	if err != nil {
		panic(err)
	}
	return b
}

// rfc5769IPv6Response is the RFC 5769 §2.3 sample response.
func rfc5769IPv6Response() []byte {
	return mustHex("01010048" + "2112a442" + "b7e7a701bc34d686fa87dfae" +
		"8022000b" + "7465737420766563746f7220" +
		"00200014" + "0002a147" + "0113a9fa" + "a5d3f179" + "bc25f4b5" + "bed2b9d9" +
		"00080014" + "a382954e4be67bf11784c97c8292c275bfe3ed41" +
		"80280004" + "c8fb0b4c")
}

func TestKeepalive(t *testing.T) {
	// Long enough that a client starved of the CPU for a moment (CI runs
	// packages side by side, with the race detector) misses no pings.
	interval := 100 * time.Millisecond
	srv, server := startServer(t, "127.0.0.1", ServerConfig{KeepAliveInterval: interval, MaxMisses: 3})
	answering := newClientSocket(t, "127.0.0.1")
	pinged := make(chan struct{}, 100)
	answering.client.cfg.OnPing = func(netip.AddrPort) { pinged <- struct{}{} }
	if _, err := answering.client.QueryKeepalive(t.Context(), server); err != nil {
		t.Fatal(err)
	}
	// A client that asks, then goes silent (its socket closes).
	silent := newClientSocket(t, "127.0.0.1")
	if _, err := silent.client.QueryKeepalive(t.Context(), server); err != nil {
		t.Fatal(err)
	}
	if n := srv.Stats().KeptAlive; n != 2 {
		t.Fatalf("kept alive %d clients, want 2", n)
	}
	silent.pc.Close()
	for range 6 { // six pings answered, several intervals
		select {
		case <-pinged:
		case <-t.Context().Done():
			t.Fatal("no pings")
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().Forgotten != 1 && time.Now().Before(deadline) {
		time.Sleep(interval)
	}
	st := srv.Stats()
	if st.Forgotten != 1 || st.KeptAlive != 1 {
		t.Fatalf("stats %+v: want the silent client forgotten and the answering one kept", st)
	}
	// A plain query does not register.
	plain := newClientSocket(t, "127.0.0.1")
	plain.client.Query(t.Context(), server)
	if n := srv.Stats().KeptAlive; n != 1 {
		t.Fatalf("plain query registered keepalive: %d", n)
	}
}

func TestServerLimits(t *testing.T) {
	now := time.Unix(1000, 0)
	srv, err := NewServer(ServerConfig{RatePerSecond: 2, Burst: 2, MaxClients: 1, now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("198.51.100.1")
	for i, want := range []bool{true, true, false} {
		if got := srv.allow(a); got != want {
			t.Fatalf("request %d allowed=%v, want %v", i, got, want)
		}
	}
	now = now.Add(time.Second)
	if !srv.allow(a) {
		t.Fatal("tokens did not refill")
	}
	pc := &net.UDPConn{}
	srv.register(pc, netip.MustParseAddrPort("198.51.100.1:1"))
	srv.register(pc, netip.MustParseAddrPort("198.51.100.2:1"))
	if n := srv.Stats().KeptAlive; n != 1 {
		t.Fatalf("MaxClients 1 but %d kept alive", n)
	}
	if _, err := NewServer(ServerConfig{MaxMisses: -1}); err == nil {
		t.Fatal("negative MaxMisses accepted")
	}
}

func TestNoAmplification(t *testing.T) {
	srv, _ := NewServer(ServerConfig{})
	for _, withFP := range []bool{false, true} {
		setters := []stun.Setter{stun.TransactionID, stun.BindingRequest}
		if withFP {
			setters = append(setters, stun.Fingerprint)
		}
		req := stun.MustBuild(setters...)
		resp := srv.response(req, netip.MustParseAddrPort("[2001:db8::1]:1"))
		if len(resp) > 2*len(req.Raw)+8 {
			t.Errorf("request %d bytes, response %d bytes", len(req.Raw), len(resp))
		}
	}
}

// needTool finds a binary the test needs: skipped locally when missing,
// a failure in CI, where scripts/test-deps.sh installs it.
func needTool(t *testing.T, name string) string {
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed; scripts/test-deps.sh should install it", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// TestInteropStunclient asks our server with coturn's standard client.
func TestInteropStunclient(t *testing.T) {
	bin := needTool(t, "turnutils_stunclient")
	_, server := startServer(t, "127.0.0.1", ServerConfig{})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-p", strconv.Itoa(int(server.Port())), "127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("turnutils_stunclient: %v\n%s", err, out)
	}
	// It prints the mapped address; it must be a loopback address:port.
	if !strings.Contains(string(out), "127.0.0.1:") {
		t.Fatalf("no mapped address in output:\n%s", out)
	}
}

// FuzzIsSTUN checks IsSTUN agrees with pion's decoder on what it accepts.
func FuzzIsSTUN(f *testing.F) {
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw)
	f.Add([]byte{0xc3, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		if IsSTUN(b) && (len(b) < headerSize || b[0]&0xC0 != 0) {
			t.Fatalf("IsSTUN accepted %x", b)
		}
	})
}

// FuzzClientHandlePacket feeds arbitrary packets to a client with a query
// pending: nothing may panic, and non-STUN must be passed on.
func FuzzClientHandlePacket(f *testing.F) {
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(198, 51, 100, 1), Port: 1}).Raw)
	f.Add(rfc5769IPv6Response())
	f.Fuzz(func(t *testing.T, b []byte) {
		c, _ := NewClient(ClientConfig{Send: func(b []byte, _ netip.AddrPort) (int, error) { return len(b), nil }})
		from := netip.MustParseAddrPort("198.51.100.1:3478")
		c.keepalives[from] = true
		if got := c.HandlePacket(b, from); got != IsSTUN(b) {
			t.Fatalf("HandlePacket = %v for IsSTUN = %v", got, IsSTUN(b))
		}
	})
}

// FuzzServerHandle feeds arbitrary datagrams to the server: nothing may
// panic, a response is never much larger than the request, a request
// whose FINGERPRINT does not match gets none, and a 420 lists only
// comprehension-required attributes the request carried.
func FuzzServerHandle(f *testing.F) {
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest).Raw)
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.RawAttribute{Type: AttrKeepaliveRequest}, stun.Fingerprint).Raw)
	f.Add(rfc5769Request())
	f.Add(corrupt(rfc5769Request()))
	f.Fuzz(func(t *testing.T, b []byte) {
		srv, _ := NewServer(ServerConfig{})
		pc := &recordingConn{}
		srv.handle(pc, pc, b, netip.MustParseAddrPort("[2001:db8::1]:40000"))
		if pc.n == 0 {
			return
		}
		if pc.n > 1 || len(pc.last) > 2*len(b)+24 {
			t.Fatalf("request of %d bytes got %d responses, the last of %d bytes", len(b), pc.n, len(pc.last))
		}
		req := &stun.Message{Raw: append([]byte(nil), b...)}
		if err := req.Decode(); err != nil {
			t.Fatalf("answered a request pion cannot decode: %v", err)
		}
		if req.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(req) != nil {
			t.Fatal("answered a request whose FINGERPRINT does not match")
		}
		resp := &stun.Message{Raw: pc.last}
		if err := resp.Decode(); err != nil {
			t.Fatalf("response does not decode: %v", err)
		}
		if resp.Type != stun.BindingError {
			return
		}
		for _, typ := range unknownAttributes(t, resp) {
			if !typ.Required() || !req.Contains(typ) {
				t.Fatalf("420 lists %v, not a required attribute of the request", typ)
			}
		}
	})
}

// recordingConn is a PacketConn that records what is written to it.
type recordingConn struct {
	net.PacketConn
	n    int
	last []byte
}

func (r *recordingConn) WriteTo(b []byte, _ net.Addr) (int, error) {
	r.n++
	r.last = append([]byte(nil), b...)
	return len(b), nil
}

// rfc5769Request is the RFC 5769 §2.1 sample request: SOFTWARE, PRIORITY,
// ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
func rfc5769Request() []byte {
	return mustHex("00010058" + "2112a442" + "b7e7a701bc34d686fa87dfae" +
		"80220010" + "5354554e207465737420636c69656e74" +
		"00240004" + "6e0001ff" +
		"80290008" + "932ff9b151263b36" +
		"00060009" + "6576746a3a68367659202020" +
		"00080014" + "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2" +
		"80280004" + "e57a3bcf")
}

// request builds a Binding request with a fresh transaction id.
func request(t *testing.T, setters ...stun.Setter) []byte {
	t.Helper()
	m, err := stun.Build(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, setters...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

// corrupt returns b with its last byte (in the FINGERPRINT) flipped.
func corrupt(b []byte) []byte {
	b = append([]byte(nil), b...)
	b[len(b)-1] ^= 0x01
	return b
}

// TestServerChecksRequests sends requests over UDP: a FINGERPRINT that
// does not match (or is not last) gets no answer at all (RFC 8489 §14.7),
// and unknown comprehension-required attributes get 420 with
// UNKNOWN-ATTRIBUTES listing each once (§6.3.1, §14.9); optional ones and
// CHANGE-REQUEST are fine.
func TestServerChecksRequests(t *testing.T) {
	var dropped stun.MessageType // no answer
	unknownReq := request(t, stun.RawAttribute{Type: 0x0024, Value: []byte{1, 2, 3, 4}}, stun.RawAttribute{Type: 0x7F01},
		stun.RawAttribute{Type: 0x0024, Value: []byte{5, 6, 7, 8}}, stun.RawAttribute{Type: 0x8055}, stun.Fingerprint)
	tests := []struct {
		name    string
		req     []byte
		want    stun.MessageType // dropped: no answer
		unknown []stun.AttrType  // listed in a 420
	}{
		{"plain", request(t), stun.BindingSuccess, nil},
		{"fingerprint", request(t, stun.Fingerprint), stun.BindingSuccess, nil},
		{"bad fingerprint", corrupt(request(t, stun.Fingerprint)), dropped, nil},
		{"fingerprint not last", request(t, stun.Fingerprint, stun.RawAttribute{Type: 0x8022, Value: []byte("x")}), dropped, nil},
		{"optional unknown", request(t, stun.RawAttribute{Type: 0x8055, Value: []byte("abc")}, stun.Fingerprint), stun.BindingSuccess, nil},
		{"keepalive request", request(t, stun.RawAttribute{Type: AttrKeepaliveRequest}, stun.Fingerprint), stun.BindingSuccess, nil},
		{"change request", request(t, stun.RawAttribute{Type: AttrChangeRequest, Value: []byte{0, 0, 0, 0}}), stun.BindingSuccess, nil},
		{"unknown required", unknownReq, stun.BindingError, []stun.AttrType{0x0024, 0x7F01}},
		{"unknown required, bad fingerprint", corrupt(unknownReq), dropped, nil},
		{"RFC 5769 sample request", rfc5769Request(), stun.BindingError, []stun.AttrType{0x0024, stun.AttrUsername, stun.AttrMessageIntegrity}},
		{"RFC 5769 sample request, bad fingerprint", corrupt(rfc5769Request()), dropped, nil},
	}
	srv, server := startServer(t, "127.0.0.1", ServerConfig{RatePerSecond: 1000})
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := srv.Stats().Dropped
			// A plain request follows: when its answer is the first to
			// come back, the server has handled (and ignored) tt.req.
			after := request(t)
			if _, err := conn.Write(tt.req); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Write(after); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 1500)
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			resp := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if err := resp.Decode(); err != nil {
				t.Fatal(err)
			}
			if tt.want == dropped {
				if !bytes.Equal(resp.TransactionID[:], after[8:20]) {
					t.Fatalf("answered %v to a request that should be dropped", resp.Type)
				}
				if got := srv.Stats().Dropped; got != before+1 {
					t.Errorf("dropped %d, want %d", got, before+1)
				}
				return
			}
			if !bytes.Equal(resp.TransactionID[:], tt.req[8:20]) || resp.Type != tt.want {
				t.Fatalf("answer %v to %x, want %v", resp.Type, resp.TransactionID, tt.want)
			}
			if n, err := conn.Read(buf); err != nil || !bytes.Equal(buf[8:20], after[8:20]) {
				t.Fatalf("second answer: %x, %v", buf[:n], err)
			}
			if bytes.HasSuffix(tt.req[len(tt.req)-8:len(tt.req)-4], []byte{0x80, 0x28, 0, 4}) {
				if err := stun.Fingerprint.Check(resp); err != nil {
					t.Errorf("answer's fingerprint: %v", err)
				}
			}
			if tt.want != stun.BindingError {
				return
			}
			var code stun.ErrorCodeAttribute
			if err := code.GetFrom(resp); err != nil || code.Code != stun.CodeUnknownAttribute {
				t.Errorf("error code %v, %v; want 420", code.Code, err)
			}
			if got := unknownAttributes(t, resp); !slices.Equal(got, tt.unknown) {
				t.Errorf("UNKNOWN-ATTRIBUTES %v, want %v", got, tt.unknown)
			}
			if resp.Contains(stun.AttrXORMappedAddress) {
				t.Error("a 420 answer carries a mapped address")
			}
		})
	}
	if n := srv.Stats().KeptAlive; n != 1 {
		t.Errorf("kept alive %d clients, want 1 (the keepalive request)", n)
	}
}

// unknownAttributes decodes UNKNOWN-ATTRIBUTES as RFC 8489 §14.9 lays it
// out: 16-bit types, padded to 4 bytes.
func unknownAttributes(t *testing.T, m *stun.Message) []stun.AttrType {
	t.Helper()
	v, err := m.Get(stun.AttrUnknownAttributes)
	if err != nil || len(v)%2 != 0 {
		t.Fatalf("UNKNOWN-ATTRIBUTES %x, %v", v, err)
	}
	var out []stun.AttrType
	for i := 0; i < len(v); i += 2 {
		out = append(out, stun.AttrType(binary.BigEndian.Uint16(v[i:])))
	}
	return out
}

// TestRFC5769Request checks the transcription of the RFC 5769 §2.1 sample
// request: its FINGERPRINT matches.
func TestRFC5769Request(t *testing.T) {
	m := &stun.Message{Raw: rfc5769Request()}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		t.Fatalf("fingerprint: %v", err)
	}
}

// countingHandler counts the records at Info and above.
type countingHandler struct{ n *atomic.Int64 }

func (h countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h countingHandler) Handle(context.Context, slog.Record) error    { h.n.Add(1); return nil }
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h countingHandler) WithGroup(string) slog.Handler                { return h }

// A flood of keepalive requests from many sources (which anyone can send,
// from spoofed addresses) logs a handful of lines, not one per source, and
// the refusals past MaxClients are counted.
func TestKeepaliveFloodLogs(t *testing.T) {
	const maxClients, flood = 500, 2000
	var lines atomic.Int64
	srv, server := startServer(t, "127.0.0.1", ServerConfig{MaxClients: maxClients, RatePerSecond: 1e6, Burst: 1e6,
		KeepAliveInterval: time.Hour, Logger: slog.New(countingHandler{&lines})})
	req := request(t, stun.TransactionID, stun.BindingRequest, stun.RawAttribute{Type: AttrKeepaliveRequest})
	socks := make([]*net.UDPConn, 0, flood)
	t.Cleanup(func() {
		for _, s := range socks {
			s.Close()
		}
	})
	waitAnswered := func(n uint64) {
		deadline := time.Now().Add(10 * time.Second)
		for srv.Stats().Requests < n && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	for i := range flood {
		if i%100 == 0 { // in batches the socket buffer holds
			waitAnswered(uint64(i))
		}
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		socks = append(socks, pc)
		if _, err := pc.WriteToUDPAddrPort(req, server); err != nil {
			t.Fatal(err)
		}
	}
	waitAnswered(flood)
	st := srv.Stats()
	if st.Requests != flood || st.KeptAlive != maxClients || st.Refused != flood-maxClients {
		t.Fatalf("stats %+v: want %d answered, %d kept alive, %d refused", st, flood, maxClients, flood-maxClients)
	}
	if n := lines.Load(); n > 3 {
		t.Errorf("%d requests logged %d lines at Info or above, want a handful", flood, n)
	}
}

// A client that never answered a ping (perhaps a spoofed source) is
// forgotten at its first miss, freeing its place; one that answered is
// forgotten only after MaxMisses.
func TestKeepaliveForgetsNeverAnswered(t *testing.T) {
	srv, err := NewServer(ServerConfig{KeepAliveInterval: time.Hour, MaxMisses: 3})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pc) }()
	t.Cleanup(func() { cancel(); <-done; pc.Close() })
	server := pc.LocalAddr().(*net.UDPAddr).AddrPort()

	answering := newClientSocket(t, "127.0.0.1")
	if _, err := answering.client.QueryKeepalive(t.Context(), server); err != nil {
		t.Fatal(err)
	}
	silent := newClientSocket(t, "127.0.0.1")
	silent.client.cfg.OnPing = nil
	if _, err := silent.client.QueryKeepalive(t.Context(), server); err != nil {
		t.Fatal(err)
	}
	silent.pc.Close() // asked, then never answers: as a spoofed source
	srv.pingAll(pc)
	// Wait for the answering client's answer to arrive.
	deadline := time.Now().Add(5 * time.Second)
	for !srv.answered(answering.addr()) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !srv.answered(answering.addr()) {
		t.Fatal("the answering client's answer did not arrive")
	}
	answering.pc.Close() // now it goes silent too
	srv.pingAll(pc)
	if st := srv.Stats(); st.Forgotten != 1 || st.KeptAlive != 1 {
		t.Fatalf("after one miss: stats %+v, want the never-answering client forgotten, the other kept", st)
	}
	srv.pingAll(pc)
	srv.pingAll(pc)
	if st := srv.Stats(); st.KeptAlive != 1 {
		t.Fatalf("after two misses: stats %+v, want the client that answered still kept", st)
	}
	srv.pingAll(pc)
	if st := srv.Stats(); st.Forgotten != 2 || st.KeptAlive != 0 {
		t.Fatalf("after three misses: stats %+v, want both forgotten", st)
	}
}

// answered reports whether the client at from answered a ping.
func (s *Server) answered(from netip.AddrPort) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[from]
	return ok && c.answered
}
