package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// headRecorder is an app that answers every request with 204 and hands
// over the header lines it received.
type headRecorder struct {
	ln    net.Listener
	heads chan []string
}

func startHeadRecorder(t *testing.T) *headRecorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &headRecorder{ln: ln, heads: make(chan []string, 16)}
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
				c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				var lines []string
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line = strings.TrimRight(line, "\r\n"); line == "" {
						break
					}
					lines = append(lines, line)
				}
				r.heads <- lines[1:] // the fields
				io.WriteString(c, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
			})
		}
	})
	return r
}

// Name and Dial make headRecorder a Backend (and Router) of its own.
func (r *headRecorder) Name() string { return "app" }
func (r *headRecorder) Dial(ctx context.Context, _ netip.AddrPort) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, "tcp", r.ln.Addr().String())
}
func (r *headRecorder) Route(string) (Backend, error) { return r, nil }

// testTLSConfigs returns the server and client sides of a TLS connection
// with the repository's test certificates (name "localhost").
func testTLSConfigs(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair("../testdata/certs/coordinator.pem", "../testdata/certs/coordinator-key.pem")
	if err != nil {
		t.Fatalf("test certificate (make certs): %v", err)
	}
	ca, err := os.ReadFile("../testdata/certs/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &tls.Config{Certificates: []tls.Certificate{cert}}, &tls.Config{RootCAs: pool, ServerName: "localhost"}
}

// TestForwardingFields checks that the forwarding fields a public client
// sends never reach the app (the proxy writes its own, on plain and TLS
// connections alike), while those of a trusted proxy are kept and
// extended.
func TestForwardingFields(t *testing.T) {
	app := startHeadRecorder(t)
	p, err := NewReverse(ReverseConfig{Router: app, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, clientTLS := testTLSConfigs(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	secure := tls.NewListener(ln, serverTLS)
	var wg sync.WaitGroup
	wg.Go(func() { p.Serve(plain) })
	wg.Go(func() { p.Serve(secure) })
	t.Cleanup(func() { p.Close(); wg.Wait() })

	const forged = "Forwarded: for=203.0.113.7;proto=https\r\nX-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\n" +
		"x-forwarded-proto: https\r\nX-Forwarded-Host: bank.example\r\nX-Forwarded-Port: 443\r\n"
	stranger := []string{"X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: http", "X-Forwarded-Host: app.example",
		"X-Real-IP: 127.0.0.1", `Forwarded: for=127.0.0.1;host="app.example";proto=http`}
	tests := []struct {
		name   string
		from   string // client's source address
		tls    bool
		fields string // sent after Host
		want   []string
	}{
		{"stranger", "127.0.0.1", false, forged, stranger},
		{"stranger over TLS", "127.0.0.1", true, forged, []string{"X-Forwarded-For: 127.0.0.1", "X-Forwarded-Proto: https",
			"X-Forwarded-Host: app.example", "X-Real-IP: 127.0.0.1", `Forwarded: for=127.0.0.1;host="app.example";proto=https`}},
		{"stranger without fields", "127.0.0.1", false, "", stranger},
		{"trusted proxy", "127.0.0.2", false, forged, []string{"X-Forwarded-For: 203.0.113.7, 127.0.0.2", "X-Forwarded-Proto: https",
			"X-Forwarded-Host: bank.example", "X-Forwarded-Port: 443", "X-Real-IP: 203.0.113.7",
			`Forwarded: for=203.0.113.7;proto=https, for=127.0.0.2;host="app.example";proto=http`}},
		{"trusted proxy over TLS, chain only", "127.0.0.2", true, "X-Forwarded-For: 203.0.113.7, 198.51.100.1\r\n",
			[]string{"X-Forwarded-For: 203.0.113.7, 198.51.100.1, 127.0.0.2", "X-Forwarded-Proto: https",
				"X-Forwarded-Host: app.example", "X-Real-IP: 198.51.100.1", `Forwarded: for=127.0.0.2;host="app.example";proto=https`}},
		{"trusted proxy without fields", "127.0.0.2", false, "", []string{"X-Forwarded-For: 127.0.0.2", "X-Forwarded-Proto: http",
			"X-Forwarded-Host: app.example", "X-Real-IP: 127.0.0.2", `Forwarded: for=127.0.0.2;host="app.example";proto=http`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := plain.Addr().String()
			if tt.tls {
				addr = secure.Addr().String()
			}
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(tt.from)}, Timeout: 10 * time.Second}
			c, err := d.DialContext(t.Context(), "tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.tls {
				c = tls.Client(c, clientTLS)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.example\r\n"+tt.fields+"X-Other: 1\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != http.StatusNoContent {
				t.Fatalf("response %v, %v", resp, err)
			}
			got := <-app.heads
			want := append([]string{"Host: app.example", "X-Other: 1"}, tt.want...)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("app received:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// FuzzForwardingFields checks, for any request fields, that a stranger's
// forwarding fields leave no trace in what the app is told, and that a
// trusted proxy's chain always ends with the peer.
func FuzzForwardingFields(f *testing.F) {
	f.Add("X-Forwarded-For: 203.0.113.7\r\nForwarded: for=x\r\nX-Real-IP: 1\r\n")
	f.Add("x-forwarded-for: ,\r\nX-Forwarded-For: 203.0.113.7, ::1\r\nX-Forwarded-Host:\r\n")
	f.Add("X-Forwarded-Proto: https\r\nX-Forwarded-Port: 8443\r\n")
	remote := netip.MustParseAddrPort("[2001:db8::1]:4000")
	plain, err := parseRequestHead(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: h\r\n\r\n")), 1<<16)
	if err != nil {
		f.Fatal(err)
	}
	want := strings.Join(forwardingFields(plain, remote, "h", "http", false), "\n")
	f.Fuzz(func(t *testing.T, fields string) {
		h, err := parseRequestHead(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: h\r\n"+fields+"\r\n")), 1<<16)
		if err != nil {
			return
		}
		if got := strings.Join(forwardingFields(h, remote, "h", "http", false), "\n"); got != want {
			t.Fatalf("stranger's fields changed what the app is told:\n%s\nwant:\n%s", got, want)
		}
		for _, line := range forwardingFields(h, remote, "h", "http", true) {
			if strings.ContainsAny(line, "\r\n") {
				t.Fatalf("line %q breaks the head", line)
			}
			if xff, ok := strings.CutPrefix(line, "X-Forwarded-For: "); ok && xff != "2001:db8::1" && !strings.HasSuffix(xff, ", 2001:db8::1") {
				t.Fatalf("X-Forwarded-For %q does not end with the peer", xff)
			}
		}
	})
}
