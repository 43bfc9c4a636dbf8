package quictun

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestFrameRoundTrip(t *testing.T) {
	tests := []frame{
		&Hello{Version: 1, Token: "tok", PublicAddr: netip.MustParseAddrPort("198.51.100.7:4242"), CertSHA256: [32]byte{1, 2, 3}, ClientName: "laptop"},
		&Hello{Version: 1, Token: "t"},
		&Welcome{Version: 1, ObservedAddr: netip.MustParseAddrPort("[2001:db8::1]:443"), DialBackFrom: netip.MustParseAddrPort("203.0.113.1:4433")},
		&AddrUpdate{PublicAddr: netip.MustParseAddrPort("198.51.100.8:1")},
		&Open{Session: SessionID{9, 9, 9}, Target: "example.test:443"},
		&Open{Session: SessionID{7}, Target: "example.test:443", Fast: true},
		&OpenResult{Code: CodeTargetUnreachable, Reason: "connection refused"},
		&OpenResult{},
		&OpenResult{PunchTo: netip.MustParseAddrPort("[2001:db8:a::30]:4434")},
		&WorkerHello{Version: ProtocolVersion, Token: "w", Advertise: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.30:4434")}},
		&WorkerHello{},
		&Job{Session: SessionID{9}, Target: "example.test:443", CertSHA256: [32]byte{1}, Reported: netip.MustParseAddrPort("203.0.113.2:5000")},
		&JobResult{Code: CodeOK, PunchTo: netip.MustParseAddrPort("198.51.100.30:4434")},
		&Register{Kind: ServiceHTTP, Name: "app", Port: 8081},
		&Register{Kind: ServiceHTTP, Name: "app", HostHeader: "127.0.0.1:3000"},
		&Register{Kind: ServiceHTTP, Name: "app", BasicAuth: HashCredentials("u", "p")},
		&Register{Kind: ServiceHTTP, Name: "app", HostHeader: "localhost", BasicAuth: &AuthHash{User: [32]byte{1}, Password: [32]byte{2}}},
		&Register{Kind: ServiceTCP, Name: "db", AllowFrom: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/32")}},
		&Register{Kind: ServiceHTTP, Name: "app", BasicAuth: HashCredentials("u", "p"), AllowFrom: []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32")}},
		&RequestLog{Session: SessionID{3}, Service: "app", Remote: netip.MustParseAddrPort("198.51.100.9:50000"), Method: "POST",
			Target: "/upload?x=1", Status: 201, Up: 1 << 33, Down: 17, Duration: 1500 * time.Microsecond, TLS: true, Outcome: "ok"},
		&RequestLog{},
	}
	for _, m := range tests {
		b, err := AppendFrame(nil, m)
		if err != nil {
			t.Fatalf("AppendFrame(%T): %v", m, err)
		}
		got, err := ReadFrame(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("ReadFrame(%T): %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip %T: got %+v, want %+v", m, got, m)
		}
	}
}

func TestReadFrameRejects(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
	}{
		{"unknown type", []byte{0x7f, 0, 0}},
		{"oversized", []byte{msgOpen, 0xff, 0xff}},
		{"truncated body", []byte{msgOpen, 0, 10, 1, 2}},
		{"short open", []byte{msgOpen, 0, 2, 1, 2}},
		{"trailing bytes", append(mustFrame(&AddrUpdate{})[:1], append([]byte{0, 3}, 0, 0, 7)...)},
		{"bad address", append([]byte{msgAddrUpdate, 0, 5, 0, 3}, "abc"...)},
		{"long token", helloWithToken(maxTokenLen + 1)},
		{"short basic auth", append([]byte{msgRegister, 0, 13, 1, 0, 1, 'a', 0, 0, 0, 0, 0, 3}, "abc"...)},
		{"bad allow-from", append([]byte{msgRegister, 0, 17, 1, 0, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 5}, "1.2.x"...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ReadFrame(bytes.NewReader(tt.b)); !errors.Is(err, ErrProtocol) {
				t.Fatalf("ReadFrame = %v, want ErrProtocol", err)
			}
		})
	}
}

func mustFrame(m frame) []byte {
	b, err := AppendFrame(nil, m)
	if err != nil {
		panic(err)
	}
	return b
}

func helloWithToken(n int) []byte {
	return mustFrame(&Hello{Token: strings.Repeat("x", n)})
}

// TestRequestLogCutsLongFields: a request-target, method or outcome
// longer than its bound is cut when sent, so the record still goes out.
func TestRequestLogCutsLongFields(t *testing.T) {
	long := strings.Repeat("x", 3000)
	b, err := AppendFrame(nil, &RequestLog{Method: long, Target: "/" + long, Outcome: long})
	if err != nil {
		t.Fatal(err)
	}
	m, err := ReadFrame(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	r := m.(*RequestLog)
	if len(r.Method) != maxMethodLen || len(r.Target) != maxTargetLen || len(r.Outcome) != maxOutcomeLen || r.Target[0] != '/' {
		t.Errorf("cut to %d, %d and %d bytes", len(r.Method), len(r.Target), len(r.Outcome))
	}
}

func TestSessionHeader(t *testing.T) {
	id := NewSessionID()
	b := AppendSessionHeader(nil, id)
	if len(b) != SessionHeaderSize {
		t.Fatalf("header is %d bytes", len(b))
	}
	got, err := ReadSessionHeader(bytes.NewReader(b))
	if err != nil || got != id {
		t.Fatalf("ReadSessionHeader = %v, %v; want %v", got, err, id)
	}
	bad := bytes.Clone(b)
	bad[0] = 0
	if _, err := ParseSessionHeader(bad); !errors.Is(err, ErrProtocol) {
		t.Errorf("bad magic: %v", err)
	}
	bad = bytes.Clone(b)
	bad[1] = 99
	if _, err := ParseSessionHeader(bad); !errors.Is(err, ErrVersion) {
		t.Errorf("bad version: %v", err)
	}
	if _, err := ReadSessionHeader(bytes.NewReader(b[:5])); err == nil {
		t.Error("short header accepted")
	}
}

// FuzzReadFrame checks that any frame that decodes re-encodes to the same
// bytes, and that nothing panics.
func FuzzReadFrame(f *testing.F) {
	for _, m := range []frame{
		&Hello{Version: 1, Token: "tok", PublicAddr: netip.MustParseAddrPort("198.51.100.7:4242"), ClientName: "x"},
		&Welcome{Version: 1, ObservedAddr: netip.MustParseAddrPort("[2001:db8::1]:443")},
		&AddrUpdate{PublicAddr: netip.MustParseAddrPort("203.0.113.9:7")},
		&Open{Target: "example.test:80"},
		&Open{Target: "example.test:443", Fast: true},
		&OpenResult{Code: CodeTimeout, Reason: "slow"},
		&WorkerHello{Version: 2, Token: "w", Advertise: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.30:1")}},
		&Job{Target: "a:1", Observed: netip.MustParseAddrPort("203.0.113.2:9")},
		&JobResult{Code: CodeOK, PunchTo: netip.MustParseAddrPort("[2001:db8::3]:4")},
		&Register{Kind: ServiceTCP, Name: "db"},
		&Register{Kind: ServiceHTTP, Name: "app", HostHeader: "localhost:5173"},
		&Register{Kind: ServiceHTTP, Name: "app", BasicAuth: HashCredentials("alice", "secret")},
		&Register{Kind: ServiceTCP, Name: "db", AllowFrom: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
		&RequestLog{Service: "app", Remote: netip.MustParseAddrPort("[2001:db8::2]:1"), Method: "GET", Target: "/", Status: 200,
			Duration: time.Second, TLS: true, Outcome: "canceled"},
	} {
		f.Add(mustFrame(m))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ReadFrame(bytes.NewReader(b))
		if err != nil {
			return
		}
		out, err := AppendFrame(nil, m.(frame))
		if err != nil {
			t.Fatalf("re-encode %T: %v", m, err)
		}
		again, err := ReadFrame(bytes.NewReader(out))
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip of %T changed it: %+v -> %+v (%v)", m, m, again, err)
		}
	})
}

// FuzzSessionHeader checks the session header parser never panics and that
// what it accepts re-encodes to the same bytes.
func FuzzSessionHeader(f *testing.F) {
	f.Add(AppendSessionHeader(nil, SessionID{1, 2, 3}))
	f.Add([]byte{sessionMagic, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := ParseSessionHeader(b)
		if err != nil {
			return
		}
		if !bytes.Equal(AppendSessionHeader(nil, id), b) {
			t.Fatalf("header %x re-encodes differently", b)
		}
	})
}

func TestPunchPacket(t *testing.T) {
	id := NewSessionID()
	p := punchPacket(id)
	k, ok := parsePunch(p)
	if !ok || k != punchKeyOf(id) {
		t.Fatalf("parsePunch(punchPacket) = %x, %v; want %x", k, ok, punchKeyOf(id))
	}
	if bytes.Contains(p, id[:4]) {
		t.Errorf("punch %x carries the session id", p)
	}
	for _, b := range [][]byte{nil, {0}, p[:len(p)-1], append([]byte{0x40}, p[1:]...)} {
		if _, ok := parsePunch(b); ok {
			t.Errorf("parsePunch(%x) accepted", b)
		}
	}
}

func FuzzParsePunch(f *testing.F) {
	f.Add(punchPacket(SessionID{1}))
	f.Add([]byte{0, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		k, ok := parsePunch(b)
		if ok && len(b) < 20 {
			t.Fatalf("accepted %d bytes as punch %x", len(b), k)
		}
	})
}

// TestRegisterWithoutHostHeader: a Register that rewrites nothing is byte
// for byte what coordinators from before the field read (they refuse
// trailing bytes).
func TestRegisterWithoutHostHeader(t *testing.T) {
	got := mustFrame(&Register{Kind: ServiceHTTP, Name: "app", Port: 0x1f90})
	want := []byte{msgRegister, 0, 8, byte(ServiceHTTP), 0, 3, 'a', 'p', 'p', 0x1f, 0x90}
	if !bytes.Equal(got, want) {
		t.Fatalf("Register = % x, want % x", got, want)
	}
}

func TestValidHostHeader(t *testing.T) {
	for _, tt := range []struct {
		h  string
		ok bool
	}{
		{"localhost", true},
		{"localhost:5173", true},
		{"127.0.0.1:3000", true},
		{"app.internal_1.test", true},
		{"[::1]", true},
		{"[::1]:8080", true},
		{"[2001:db8::5]:443", true},
		{"", false},
		{"localhost:", false},
		{":80", false},
		{"localhost:0", false},
		{"localhost:65536", false},
		{"localhost:+80", false},
		{"a b", false},
		{"evil\r\nX-Injected: 1", false},
		{"a,b", false},
		{"[::1", false},
		{"[127.0.0.1]", false},
		{"[::1]80", false},
		{"[::1]:", false},
		{"[::% ]", false}, // found by FuzzValidHostHeader: a zone may hold any byte
		{"[fe80::1%eth0]:80", false},
		{"::1", false},
		{strings.Repeat("a", maxNameLen+1), false},
	} {
		if got := ValidHostHeader(tt.h); got != tt.ok {
			t.Errorf("ValidHostHeader(%q) = %v, want %v", tt.h, got, tt.ok)
		}
	}
}

// FuzzValidHostHeader checks that what ValidHostHeader accepts can go in a
// header line as it is: no control bytes, spaces or commas, and a host and
// port the standard library splits the same way.
func FuzzValidHostHeader(f *testing.F) {
	for _, s := range []string{"localhost", "127.0.0.1:3000", "[::1]:8080", "a b", "x\r\nY: z", "[::1]:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		if !ValidHostHeader(h) {
			return
		}
		for i := 0; i < len(h); i++ {
			if c := h[i]; c <= ' ' || c >= 0x7f || c == ',' {
				t.Fatalf("accepted %q, with byte 0x%02x", h, c)
			}
		}
		if strings.Count(h, ":") == 1 || strings.HasPrefix(h, "[") && strings.Contains(h, "]:") {
			if _, port, err := net.SplitHostPort(h); err != nil || port == "" {
				t.Fatalf("accepted %q, which net.SplitHostPort refuses: %v", h, err)
			}
		}
	})
}
