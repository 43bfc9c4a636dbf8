package e2e

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"quictunnel/internal/coordinator"
	"quictunnel/internal/localproxy"
	"quictunnel/quictun"
)

// nameLab is a coordinator with a public HTTP port and a port range whose
// tokens belong to alice and bob, with a short name grace and, if set, a
// state file; and the localproxies exposing apps through it.
type nameLab struct {
	grace              time.Duration
	stateFile          string
	ports              coordinator.PortRange
	quicAddr, httpAddr string
	coord              *coordinator.Coordinator
	coordLog           *logBuffer
	stop               func()
}

var nameTokens = map[string]string{"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}

func startNameLab(t *testing.T, grace time.Duration, stateFile string) *nameLab {
	t.Helper()
	base := 20000 + rand.IntN(500)*20 // below the ephemeral range, as in startReverseLab
	l := &nameLab{grace: grace, stateFile: stateFile, coordLog: &logBuffer{},
		ports: coordinator.PortRange{Min: uint16(base), Max: uint16(base + 19)}, quicAddr: "127.0.0.1:0", httpAddr: "127.0.0.1:0"}
	l.start(t)
	t.Cleanup(func() {
		l.stop()
		if t.Failed() {
			t.Logf("coordinator log:\n%s", l.coordLog)
		}
	})
	return l
}

// start starts coordinator, or starts it anew on the same addresses.
func (l *nameLab) start(t *testing.T) {
	t.Helper()
	cert, _ := loadCoordinatorCert(t)
	var tokens []coordinator.TokenEntry
	for who, tok := range nameTokens {
		tokens = append(tokens, coordinator.TokenEntry{Token: tok, Client: who})
	}
	c, err := coordinator.New(coordinator.Config{
		Listen: l.quicAddr, Certificate: cert, Tokens: tokens, ReporterListen: "127.0.0.1:0",
		HTTPListen: l.httpAddr, Domain: "localhost", PortRange: l.ports, PublicBind: "127.0.0.1",
		NameGrace: l.grace, StateFile: l.stateFile, Logger: l.coordLog.logger(),
	})
	if err != nil {
		t.Fatalf("coordinator: %v", err)
	}
	l.coord, l.quicAddr, l.httpAddr = c, c.Addr().String(), c.HTTPAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	l.stop = func() { once.Do(func() { cancel(); <-done }) }
}

// client starts who's localproxy exposing an app that answers who, as
// "app", and a TCP service "db" on port (0: any). It waits for the first
// outcome of both registrations; stop ends it.
func (l *nameLab) client(t *testing.T, who string, port uint16) (p *localproxy.Proxy, stop func()) {
	t.Helper()
	app := startTarget(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, who) }))
	_, pool := loadCoordinatorCert(t)
	log := &logBuffer{}
	p, err := localproxy.New(localproxy.Config{
		Listen: "127.0.0.1:0", UDPListen: "127.0.0.1:0", Coordinator: l.quicAddr, Reporter: l.coord.ReporterAddr().String(),
		Token: nameTokens[who], RootCAs: pool, ServerName: "localhost", Name: who, ConnectTimeout: 2 * time.Second,
		RegisterRetry: 50 * time.Millisecond, Logger: log.logger(),
		Services: []quictun.ExposedService{
			{Kind: quictun.ServiceHTTP, Name: "app", Local: app.Listener.Addr().String()},
			{Kind: quictun.ServiceTCP, Name: "db", Port: port, Local: startTCPEcho(t)},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("%s's log:\n%s", who, log)
		}
	})
	waitFor(t, who+"'s registrations", func() bool { return len(p.Client().Registrations()) == 2 })
	return p, stop
}

// get asks coordinator's public HTTP port for app.localhost.
func (l *nameLab) get(t *testing.T) (int, string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+l.httpAddr+"/", nil)
	req.Host = "app.localhost"
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("GET app: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// wantTaken checks that both of p's services were refused as taken by
// an offline client.
func wantTaken(t *testing.T, p *localproxy.Proxy, who string) {
	t.Helper()
	for _, r := range p.Client().Registrations() {
		var se *quictun.SessionError
		if !errors.As(r.Err, &se) || se.Code != quictun.CodeNameTaken || !strings.Contains(se.Reason, "offline") {
			t.Errorf("%s's %s: %+v, want refused (name taken, kept for a client that is offline)", who, r.Service.Name, r)
		}
	}
}

// wantPublished checks that both of p's services were published, and
// returns db's port.
func wantPublished(t *testing.T, p *localproxy.Proxy, who string) uint16 {
	t.Helper()
	regs := p.Client().Registrations()
	for _, r := range regs {
		if r.Err != nil {
			t.Fatalf("%s's %s refused: %v", who, r.Service.Name, r.Err)
		}
	}
	return regs[1].Port
}

// TestNameKeptForOfflineOwner: a name and a port whose client went
// offline stay its own for the grace period: another token is refused
// them with a clear reason, the public gets 502 "offline", never the
// other client's app; the owner coming back gets them at once (the same
// port, though it asks for any); after the grace period the other
// client, which kept asking, gets them.
func TestNameKeptForOfflineOwner(t *testing.T) {
	const grace = 2500 * time.Millisecond
	l := startNameLab(t, grace, "")
	alice, stopAlice := l.client(t, "alice", 0)
	port := wantPublished(t, alice, "alice")
	if status, body := l.get(t); status != 200 || body != "alice" {
		t.Fatalf("app: %d %q, want alice's", status, body)
	}
	stopAlice()
	left := time.Now()

	if status, body := l.get(t); status != 502 || !strings.Contains(body, "offline") {
		t.Errorf("app while alice is offline: %d %q, want 502 saying it is offline", status, body)
	}
	bob, _ := l.client(t, "bob", port)
	wantTaken(t, bob, "bob")
	if status, body := l.get(t); status != 502 {
		t.Errorf("app after bob asked for it: %d %q, want 502", status, body)
	}

	alice, stopAlice = l.client(t, "alice", 0)
	if got := wantPublished(t, alice, "alice"); got != port {
		t.Errorf("alice back: db on port %d, want her port %d again", got, port)
	}
	if status, body := l.get(t); status != 200 || body != "alice" {
		t.Errorf("app with alice back: %d %q, want alice's", status, body)
	}
	if time.Since(left) > grace {
		t.Fatalf("the steps above took %v, longer than the grace period: the machine is too slow for this test", time.Since(left))
	}
	stopAlice()
	left = time.Now()

	waitFor(t, "bob's retries to get app and db", func() bool {
		regs := bob.Client().Registrations()
		return regs[0].Err == nil && regs[1].Err == nil
	})
	took := time.Since(left)
	t.Logf("bob got the names %v after alice left (grace %v)", took.Round(time.Millisecond), grace)
	if took < grace-100*time.Millisecond {
		t.Errorf("bob got the names %v after alice left, before the grace period of %v", took, grace)
	}
	if got := wantPublished(t, bob, "bob"); got != port {
		t.Errorf("bob's db on port %d, want the one he asked for, %d", got, port)
	}
	if status, body := l.get(t); status != 200 || body != "bob" {
		t.Errorf("app after the grace period: %d %q, want bob's", status, body)
	}
}

// TestNamesKeptAcrossCoordinatorRestart: coordinator keeps who holds which
// name and port in its state file, so after a restart another token is
// still refused them while their owner is offline, and the owner gets
// them back, the same port included.
func TestNamesKeptAcrossCoordinatorRestart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "names.json")
	l := startNameLab(t, time.Minute, state)
	alice, stopAlice := l.client(t, "alice", 0)
	port := wantPublished(t, alice, "alice")
	l.stop()
	stopAlice()
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{nameTokens["alice"], "alice"} {
		if strings.Contains(string(b), secret) {
			t.Errorf("the state file holds %q:\n%s", secret, b)
		}
	}

	l.start(t)
	bob, _ := l.client(t, "bob", 0)
	regs := bob.Client().Registrations()
	var se *quictun.SessionError
	if !errors.As(regs[0].Err, &se) || se.Code != quictun.CodeNameTaken || !strings.Contains(se.Reason, "offline") {
		t.Errorf("bob's app after the restart: %+v, want refused (kept for a client that is offline)", regs[0])
	}
	if regs[1].Err != nil || regs[1].Port == port {
		t.Errorf("bob's db after the restart: %+v, want another port than alice's %d", regs[1], port)
	}
	if status, body := l.get(t); status != 502 || !strings.Contains(body, "offline") {
		t.Errorf("app after the restart: %d %q, want 502 offline", status, body)
	}
	alice, _ = l.client(t, "alice", 0)
	if got := wantPublished(t, alice, "alice"); got != port {
		t.Errorf("alice after the restart: db on port %d, want %d", got, port)
	}
	if status, body := l.get(t); status != 200 || body != "alice" {
		t.Errorf("app with alice back: %d %q, want alice's", status, body)
	}
}

// TestNamesKeptAcrossCoordinatorCrash runs the binaries: coordinator with
// --state-file is killed (SIGKILL) while alice's localproxy has "app"
// published, and restarted while alice is gone; bob's localproxy is
// refused the name, and the public gets 502 "offline", not bob's app.
func TestNamesKeptAcrossCoordinatorCrash(t *testing.T) {
	t.Parallel()
	certs, err := filepath.Abs(certsDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.yaml")
	os.WriteFile(tokens, []byte("tokens:\n  - token: "+nameTokens["alice"]+"\n    client: alice\n  - token: "+nameTokens["bob"]+"\n    client: bob\n"), 0o600)
	state := filepath.Join(dir, "names.json")
	quicPort, stunPort, httpPort := freeUDPPort(t), freeUDPPort(t), freeTCPPort(t)
	startCoord := func() *process {
		return start(t, nil, "coordinator", "--listen", loop(quicPort), "--reporter-listen", loop(stunPort), "--tokens", tokens, "--http", loop(httpPort),
			"--domain", "localhost", "--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
			"--state-file", state, "--name-grace", "1m")
	}
	client := func(who string) *process {
		app := startTarget(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, who) }))
		return start(t, nil, "localproxy", "--listen", loop(freeTCPPort(t)), "--coordinator", loop(quicPort), "--reporter", loop(stunPort),
			"--token", nameTokens[who], "--name", who, "--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost",
			"--expose", "app="+app.Listener.Addr().String())
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	get := func() (int, string) {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+loop(httpPort)+"/", nil)
		req.Host = "app.localhost"
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	coord := startCoord()
	alice := client("alice")
	waitFor(t, "alice's app published", func() bool { status, _ := get(); return status == 200 })
	waitFor(t, "the state file", func() bool { b, _ := os.ReadFile(state); return strings.Contains(string(b), `"app"`) })
	coord.kill()
	alice.kill()

	startCoord()
	bob := client("bob")
	waitFor(t, "bob refused", func() bool { return strings.Contains(bob.out.String(), "coordinator refused to publish a service") })
	if out := bob.out.String(); !strings.Contains(out, "offline") || !strings.Contains(out, "retrying=true") {
		t.Errorf("bob's log does not say the name is kept for an offline client and that it retries:\n%s", out)
	}
	if status, body := get(); status != 502 || !strings.Contains(body, "offline") {
		t.Errorf("app after the crash and restart: %d %q, want 502 offline", status, body)
	}
}
