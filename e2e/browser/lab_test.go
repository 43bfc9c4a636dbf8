package browser

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"quictunnel/internal/coordinator"
	"quictunnel/internal/localproxy"
)

// errNotTestSite is how the test's coordinator refuses every target but
// the test sites.
var errNotTestSite = errors.New("not a test site: refused without a DNS lookup")

// targets is coordinator's DialTarget for these tests: it maps the test
// sites' host:port to their loopback listeners and refuses every other
// address before any name is resolved, so nothing a browser asks for in
// the background leaves the machine.
type targets struct {
	t      testing.TB
	routes map[string]string // "video.test:443" → "127.0.0.1:NNNN"

	mu      sync.Mutex
	dialed  map[string]int
	refused map[string]int
}

func newTargets(t testing.TB, routes map[string]string) *targets {
	return &targets{t: t, routes: routes, dialed: map[string]int{}, refused: map[string]int{}}
}

// dial implements coordinator.Config.DialTarget.
func (m *targets) dial(ctx context.Context, network, address string) (net.Conn, error) {
	to, ok := m.routes[strings.ToLower(address)]
	m.mu.Lock()
	if ok {
		m.dialed[address]++
	} else {
		m.refused[address]++
	}
	m.mu.Unlock()
	if !ok {
		m.t.Logf("coordinator refused target %s (not a test site)", address)
		return nil, fmt.Errorf("dial %s: %w", address, errNotTestSite)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", to)
}

// counts returns how often each site address was dialed and each other
// address refused.
func (m *targets) counts() (dialed, refused map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	dialed, refused = map[string]int{}, map[string]int{}
	for k, v := range m.dialed {
		dialed[k] = v
	}
	for k, v := range m.refused {
		refused[k] = v
	}
	return dialed, refused
}

// logBuffer collects log output for the test to read.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// accessEntry is one line of localproxy's JSON access log.
type accessEntry struct {
	Method  string `json:"method"`
	Target  string `json:"target"`
	Status  int    `json:"status"`
	Session string `json:"session"`
	Up      int64  `json:"bytes_up"`
	Down    int64  `json:"bytes_down"`
	Outcome string `json:"outcome"`
}

// entries parses the buffer as JSON log lines.
func (l *logBuffer) entries(t testing.TB) []accessEntry {
	t.Helper()
	var out []accessEntry
	for line := range strings.Lines(l.String()) {
		var e accessEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("access log line %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

// lab is coordinator and localproxy running in process on loopback, with
// coordinator dialing only the test sites.
type lab struct {
	proxy     *localproxy.Proxy
	targets   *targets
	access    *logBuffer // localproxy's access log, JSON
	stopProxy func()
}

// startLab starts coordinator and localproxy (with fast open if
// fastOpen); they stop when the test ends (localproxy earlier with
// stopProxy).
func startLab(t *testing.T, tg *targets, log *slog.Logger, fastOpen bool) *lab {
	t.Helper()
	cert, pool := labCertificates(t)
	const token = "browser-test-token"
	coord, err := coordinator.New(coordinator.Config{
		Listen:         "127.0.0.1:0",
		Certificate:    cert,
		Token:          token,
		ReporterListen: "127.0.0.1:0",
		DialTarget:     tg.dial,
		Logger:         log.With("service", "coordinator"),
	})
	if err != nil {
		t.Fatalf("coordinator: %v", err)
	}
	stopCoord := runService(coord.Run)
	t.Cleanup(stopCoord)

	l := &lab{targets: tg, access: &logBuffer{}}
	l.proxy, err = localproxy.New(localproxy.Config{
		Listen:         "127.0.0.1:0",
		UDPListen:      "127.0.0.1:0",
		Coordinator:    coord.Addr().String(),
		Reporter:       coord.ReporterAddr().String(),
		Token:          token,
		RootCAs:        pool,
		ServerName:     "localhost",
		Name:           "browser-test",
		ConnectTimeout: 5 * time.Second,
		IdleRestart:    -1,
		FastOpen:       fastOpen,
		Logger:         log.With("service", "localproxy"),
		AccessLog:      slog.New(slog.NewJSONHandler(l.access, nil)),
	})
	if err != nil {
		t.Fatalf("localproxy: %v", err)
	}
	l.stopProxy = runService(l.proxy.Run)
	t.Cleanup(l.stopProxy)
	deadline := time.Now().Add(10 * time.Second)
	for !l.proxy.Client().Stats().Connected {
		if time.Now().After(deadline) {
			t.Fatal("localproxy did not connect to coordinator within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return l
}

// labCertificates loads coordinator's QUIC certificate and the CA pool
// localproxy verifies it with.
func labCertificates(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	certs := filepath.Join("..", "..", "testdata", "certs")
	cert, err := tls.LoadX509KeyPair(filepath.Join(certs, "coordinator.pem"), filepath.Join(certs, "coordinator-key.pem"))
	if err != nil {
		t.Fatalf("load coordinator certificate (make certs): %v", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(certs, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA in ca.pem")
	}
	return cert, pool
}

// runService runs run in a goroutine and returns a function that cancels
// it and waits for it to return (idempotent).
func runService(run func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx)
	}()
	var once sync.Once
	return func() { once.Do(func() { cancel(); <-done }) }
}
