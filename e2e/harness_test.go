// Package e2e runs reporter, coordinator and localproxy together with real
// sockets, QUIC and TLS, and checks what a browser and a target see.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"quictunnel/internal/coordinator"
	"quictunnel/internal/localproxy"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// logBuffer collects log output so tests can assert what was logged.
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

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond until it holds, for at most 30 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForWithin(t, 30*time.Second, what, cond)
}

// waitForWithin polls cond until it holds, for at most d.
func waitForWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(d)
	for !cond() {
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended waiting for %s", what)
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", d, what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func certsDir() string { return filepath.Join("..", "testdata", "certs") }

func loadCoordinatorCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(certsDir(), "coordinator.pem"), filepath.Join(certsDir(), "coordinator-key.pem"))
	if err != nil {
		t.Fatalf("load test certificate (make certs): %v", err)
	}
	pem, err := os.ReadFile(filepath.Join(certsDir(), "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA in ca.pem")
	}
	return cert, pool
}

// lab is the three services running in process on loopback.
type lab struct {
	coord      *coordinator.Coordinator
	proxy      *localproxy.Proxy
	proxyURL   *url.URL
	coordLog   *logBuffer
	proxyLog   *logBuffer
	stopCoord  func()
	stopProxy  func()
	proxyErr   chan error
	coordToken string
	targets    coordinator.TargetPolicy
}

type labOptions struct {
	host        string // loopback address to use: "127.0.0.1" (default) or "::1"
	clientToken string // default: the coordinator's token
	reporter    string // STUN server for localproxy; default: coordinator's embedded reporter
	idleRestart time.Duration
	// targets is coordinator's target policy; default: private targets
	// allowed, as everything in the lab is on loopback.
	targets *coordinator.TargetPolicy
	// fastOpen turns on localproxy's fast open.
	fastOpen bool
	// bodyReadTimeout is localproxy's; default: its default.
	bodyReadTimeout time.Duration
}

func startLab(t testing.TB, o labOptions) *lab {
	t.Helper()
	if o.host == "" {
		o.host = "127.0.0.1"
	}
	l := &lab{coordLog: &logBuffer{}, proxyLog: &logBuffer{}, coordToken: "e2e-token",
		targets: coordinator.TargetPolicy{AllowPrivate: true}}
	if o.targets != nil {
		l.targets = *o.targets
	}
	if o.clientToken == "" {
		o.clientToken = l.coordToken
	}
	l.startCoordinator(t, net.JoinHostPort(o.host, "0"))
	reporter := o.reporter
	if reporter == "" {
		reporter = l.coord.ReporterAddr().String()
	}
	_, pool := loadCoordinatorCert(t)
	p, err := localproxy.New(localproxy.Config{
		Listen:         net.JoinHostPort(o.host, "0"),
		UDPListen:      net.JoinHostPort(o.host, "0"),
		Coordinator:    l.coord.Addr().String(),
		Reporter:       reporter,
		Token:          o.clientToken,
		RootCAs:        pool,
		ServerName:     "localhost",
		Name:           "e2e",
		ConnectTimeout: 2 * time.Second,
		IdleRestart:    o.idleRestart,
		FastOpen:       o.fastOpen,
		Logger:         l.proxyLog.logger(),

		BodyReadTimeout: o.bodyReadTimeout,
	})
	if err != nil {
		t.Fatalf("localproxy: %v", err)
	}
	l.proxy = p
	l.proxyURL = &url.URL{Scheme: "http", Host: p.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	l.proxyErr = make(chan error, 1)
	go func() { l.proxyErr <- p.Run(ctx) }()
	var once sync.Once
	l.stopProxy = func() { once.Do(func() { cancel(); <-l.proxyErr }) }
	t.Cleanup(func() {
		l.stopProxy()
		l.stopCoord()
		if t.Failed() {
			t.Logf("coordinator log:\n%s", l.coordLog)
			t.Logf("localproxy log:\n%s", l.proxyLog)
		}
	})
	return l
}

// startCoordinator starts (or restarts) the coordinator on addr.
func (l *lab) startCoordinator(t testing.TB, addr string) {
	t.Helper()
	cert, _ := loadCoordinatorCert(t)
	host, _, _ := net.SplitHostPort(addr)
	c, err := coordinator.New(coordinator.Config{
		Listen:         addr,
		Certificate:    cert,
		Token:          l.coordToken,
		ReporterListen: net.JoinHostPort(host, "0"),
		Targets:        l.targets,
		Logger:         l.coordLog.logger(),
	})
	if err != nil {
		t.Fatalf("coordinator: %v", err)
	}
	l.coord = c
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	l.stopCoord = func() { once.Do(func() { cancel(); <-done }) }
}

// httpClient returns a client that uses the lab's proxy and trusts the
// given TLS roots (for CONNECT tests).
func (l *lab) httpClient(t *testing.T, roots *x509.CertPool, h2 bool) *http.Client {
	tr := &http.Transport{
		Proxy:             http.ProxyURL(l.proxyURL),
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: h2,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// rawTarget is a TCP server that records each request head it receives
// byte for byte and answers 200 with a fixed body.
type rawTarget struct {
	ln    net.Listener
	mu    sync.Mutex
	heads []string
	wg    sync.WaitGroup
}

func newRawTarget(t *testing.T, host string) *rawTarget {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	r := &rawTarget{ln: ln}
	r.wg.Go(r.serve)
	t.Cleanup(func() { ln.Close(); r.wg.Wait() })
	return r
}

func (r *rawTarget) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Go(func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			var head []byte
			buf := make([]byte, 4096)
			for !bytes.Contains(head, []byte("\r\n\r\n")) {
				n, err := c.Read(buf)
				head = append(head, buf[:n]...)
				if err != nil {
					return
				}
			}
			r.mu.Lock()
			r.heads = append(r.heads, string(head))
			r.mu.Unlock()
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		})
	}
}

func (r *rawTarget) lastHead() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.heads) == 0 {
		return ""
	}
	return r.heads[len(r.heads)-1]
}

func (r *rawTarget) addr() string { return r.ln.Addr().String() }

// headerLines returns the header lines of a raw request head, without the
// request line.
func headerLines(head string) []string {
	lines := strings.Split(strings.TrimSuffix(head, "\r\n\r\n"), "\r\n")
	return lines[1:]
}
