package quictun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// mapRegistry publishes services by name in a map, refusing duplicates.
type mapRegistry struct {
	mu        sync.Mutex
	byName    map[string]*Service
	withdrawn chan string
}

func newMapRegistry() *mapRegistry {
	return &mapRegistry{byName: map[string]*Service{}, withdrawn: make(chan string, 16)}
}

func (r *mapRegistry) Publish(svc *Service) (Publication, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.byName[svc.Name]; ok {
		return Publication{}, fmt.Errorf("%w: %q", ErrNameTaken, svc.Name)
	}
	r.byName[svc.Name] = svc
	return Publication{URL: "http://" + svc.Name + ".test/"}, nil
}

func (r *mapRegistry) Withdraw(svc *Service) {
	r.mu.Lock()
	if r.byName[svc.Name] == svc {
		delete(r.byName, svc.Name)
	}
	r.mu.Unlock()
	r.withdrawn <- svc.Name
}

func (r *mapRegistry) get(name string) *Service {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byName[name]
}

func waitRegistered(t *testing.T, c *Client, n int) []Registration {
	t.Helper()
	for {
		if regs := c.Registrations(); len(regs) == n {
			return regs
		}
		select {
		case <-t.Context().Done():
			t.Fatal("services were never registered")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestReverseSession(t *testing.T) {
	reg := newMapRegistry()
	app := echoServer(t, "127.0.0.1")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	deadApp := ln.Addr().String()
	ln.Close()
	h := newHarness(t, harnessOpts{
		serverMod: func(c *ServerConfig) { c.Services = reg },
		clientMod: func(c *ClientConfig) {
			c.Services = []ExposedService{
				{Kind: ServiceHTTP, Name: "app", Local: app},
				{Kind: ServiceTCP, Name: "dead", Local: deadApp},
			}
		},
	})
	regs := waitRegistered(t, h.client, 2)
	for _, r := range regs {
		if r.Err != nil || r.URL == "" {
			t.Fatalf("registration %+v", r)
		}
	}

	remote := netip.MustParseAddrPort("203.0.113.5:5555")
	// Dial waits for the client's answer; DialEarly returns at once and the
	// answer, or why there is none, comes with the first Read.
	var se *SessionError
	for _, dial := range []struct {
		name string
		f    func(*Service) (*StreamConn, error)
	}{
		{"Dial", func(s *Service) (*StreamConn, error) { return s.Dial(t.Context(), remote) }},
		{"DialEarly", func(s *Service) (*StreamConn, error) { return s.DialEarly(t.Context(), remote) }},
	} {
		conn, err := dial.f(reg.get("app"))
		if err != nil {
			t.Fatalf("%s app: %v", dial.name, err)
		}
		conn.Write([]byte("hello"))
		conn.CloseWrite()
		got, err := io.ReadAll(conn)
		conn.Close()
		if string(got) != "hello" {
			t.Fatalf("%s: echo = %q, %v", dial.name, got, err)
		}

		conn, err = dial.f(reg.get("dead"))
		if err == nil {
			if dial.name == "Dial" {
				t.Fatalf("Dial dead app succeeded")
			}
			if _, werr := conn.Write([]byte("request")); werr != nil {
				t.Fatalf("DialEarly: a write before the answer failed: %v", werr)
			}
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if !errors.As(err, &se) || se.Code != CodeTargetUnreachable || se.Reason == "" {
			t.Fatalf("%s dead app = %v, want CodeTargetUnreachable with a reason", dial.name, err)
		}
	}

	// A second client asking for the same name is refused.
	other, err := NewClient(ClientConfig{
		Transport: newTransport(t, "127.0.0.1"), Coordinator: h.serverTr.Conn.LocalAddr().String(), Token: "secret",
		RootCAs: getPKI(t).pool, ServerName: "localhost",
		Services: []ExposedService{{Kind: ServiceHTTP, Name: "app", Local: app}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel(t)
	done := make(chan error, 1)
	go func() { done <- other.Run(ctx) }()
	defer func() { cancel(); <-done }()
	r := waitRegistered(t, other, 1)[0]
	if !errors.As(r.Err, &se) || se.Code != CodeNameTaken {
		t.Fatalf("second registration of app: %+v, want CodeNameTaken", r)
	}
}

func TestReverseClientVanishes(t *testing.T) {
	reg := newMapRegistry()
	h := newHarness(t, harnessOpts{
		serverMod: func(c *ServerConfig) { c.Services = reg },
		clientMod: func(c *ClientConfig) {
			c.Services = []ExposedService{{Kind: ServiceHTTP, Name: "app", Local: "127.0.0.1:1"}}
		},
	})
	waitRegistered(t, h.client, 1)
	svc := reg.get("app")
	// The client's socket dies without a word, as when the process is
	// killed: coordinator must notice on the next request, fast.
	h.clientTr.Conn.(*net.UDPConn).Close()
	start := time.Now()
	_, err := svc.Dial(t.Context(), netip.AddrPort{})
	if !errors.Is(err, ErrClientOffline) {
		t.Fatalf("Dial = %v, want ErrClientOffline", err)
	}
	// Noticed by the missing ReverseAck, not by the 30 s idle timeout.
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("noticing took %v", d)
	}
	select {
	case name := <-reg.withdrawn:
		if name != "app" {
			t.Errorf("withdrew %q", name)
		}
	case <-t.Context().Done():
		t.Fatal("service was not withdrawn")
	}
}

func TestRegisterRefusedByGrant(t *testing.T) {
	reg := newMapRegistry()
	h := newHarness(t, harnessOpts{
		serverMod: func(c *ServerConfig) {
			c.Services = reg
			c.Authorize = func(tok string) (Grant, bool) { return Grant{Names: []string{"allowed"}}, tok == "secret" }
		},
		clientMod: func(c *ClientConfig) {
			c.Services = []ExposedService{
				{Kind: ServiceHTTP, Name: "allowed", Local: "127.0.0.1:1"},
				{Kind: ServiceHTTP, Name: "other", Local: "127.0.0.1:1"},
			}
		},
	})
	regs := waitRegistered(t, h.client, 2)
	var se *SessionError
	if regs[0].Err != nil || !errors.As(regs[1].Err, &se) || se.Code != CodeTargetForbidden {
		t.Fatalf("registrations %+v", regs)
	}
}

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithCancel(t.Context())
}

// TestRegisterHostHeader: coordinator keeps a valid Host header and
// basic auth with the service and refuses a Host header that could inject
// header lines, and either on a TCP service, publishing nothing.
func TestRegisterHostHeader(t *testing.T) {
	reg := newMapRegistry()
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) { c.Services = reg }})
	conn, err := h.client.controlConn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	register := func(r *Register) *RegisterResult {
		t.Helper()
		str, err := conn.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer str.Close()
		str.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := WriteFrame(str, r); err != nil {
			t.Fatal(err)
		}
		msg, err := ReadFrame(str)
		if err != nil {
			t.Fatal(err)
		}
		return msg.(*RegisterResult)
	}
	if res := register(&Register{Kind: ServiceHTTP, Name: "good", HostHeader: "localhost:5173"}); res.Code != CodeOK {
		t.Fatalf("valid Host header refused: %+v", res)
	}
	if svc := reg.get("good"); svc == nil || svc.HostHeader != "localhost:5173" {
		t.Fatalf("published %+v, want the Host header kept", svc)
	}
	auth := HashCredentials("alice", "secret")
	if res := register(&Register{Kind: ServiceHTTP, Name: "private", BasicAuth: auth}); res.Code != CodeOK {
		t.Fatalf("basic auth refused: %+v", res)
	}
	if svc := reg.get("private"); svc == nil || svc.BasicAuth == nil || *svc.BasicAuth != *auth {
		t.Fatalf("published %+v, want the credentials kept", svc)
	}
	for _, bad := range []*Register{
		{Kind: ServiceHTTP, Name: "inject", HostHeader: "localhost\r\nX-Injected: 1"},
		{Kind: ServiceHTTP, Name: "spaces", HostHeader: "a b"},
		{Kind: ServiceTCP, Name: "tcp", HostHeader: "localhost"},
		{Kind: ServiceTCP, Name: "tcpauth", BasicAuth: auth},
	} {
		if res := register(bad); res.Code != CodeProtocol {
			t.Errorf("%s: %+v, want CodeProtocol", bad.Name, res)
		}
		if reg.get(bad.Name) != nil {
			t.Errorf("%s was published", bad.Name)
		}
	}
}
