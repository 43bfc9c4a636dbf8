package browser

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"quictunnel/httpproxy"
	"quictunnel/internal/coordinator"
	"quictunnel/internal/localproxy"
	"quictunnel/quictun"
)

// exposedEnv is the reverse direction: the sites run on "the user's
// computer" behind localproxy, which exposes them as video and mail;
// coordinator serves them publicly as video.test and mail.test over HTTPS
// (the test CA's certificate) and plain HTTP. The browser reaches
// coordinator's public ports directly; a small proxy stands in for the DNS
// that would point the names at coordinator.
type exposedEnv struct {
	ca       *testCA
	site     *site
	coord    *coordinator.Coordinator
	proxy    *localproxy.Proxy
	resolver string // the stand-in for DNS: an HTTP proxy that only maps the site names to coordinator
	logs     *logBuffer
}

func newExposedEnv(t *testing.T) *exposedEnv {
	t.Helper()
	e := &exposedEnv{}
	var log *slog.Logger
	e.ca, e.site, e.logs, log = startSites(t)

	cert, pool := labCertificates(t)
	const token = "browser-test-token"
	leaf := e.ca.leaf
	var err error
	e.coord, err = coordinator.New(coordinator.Config{
		Listen:           "127.0.0.1:0",
		Certificate:      cert,
		Token:            token,
		ReporterListen:   "127.0.0.1:0",
		HTTPListen:       "127.0.0.1:0",
		HTTPSListen:      "127.0.0.1:0",
		HTTPSCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &leaf, nil },
		Domain:           "test",
		DialTarget:       newTargets(t, nil).dial, // no forward proxying here
		Logger:           log.With("service", "coordinator"),
	})
	if err != nil {
		t.Fatalf("coordinator: %v", err)
	}
	t.Cleanup(runService(e.coord.Run))

	site := e.site.addr("http")
	e.proxy, err = localproxy.New(localproxy.Config{
		Listen: "127.0.0.1:0", UDPListen: "127.0.0.1:0",
		Coordinator: e.coord.Addr().String(), Reporter: e.coord.ReporterAddr().String(),
		Token: token, RootCAs: pool, ServerName: "localhost", Name: "browser-test-exposed",
		ConnectTimeout: 5 * time.Second, IdleRestart: -1,
		Services: []quictun.ExposedService{
			{Kind: quictun.ServiceHTTP, Name: "video", Local: site},
			{Kind: quictun.ServiceHTTP, Name: "mail", Local: site},
		},
		Logger: log.With("service", "localproxy"),
	})
	if err != nil {
		t.Fatalf("localproxy: %v", err)
	}
	t.Cleanup(runService(e.proxy.Run))
	deadline := time.Now().Add(10 * time.Second)
	for !registered(e.proxy, 2) {
		if time.Now().After(deadline) {
			t.Fatalf("the sites were not exposed within 10s: %+v", e.proxy.Client().Registrations())
		}
		time.Sleep(20 * time.Millisecond)
	}

	routes := map[string]string{
		videoHost + ":443": e.coord.HTTPSAddr().String(), mailHost + ":443": e.coord.HTTPSAddr().String(),
		videoHost + ":80": e.coord.HTTPAddr().String(), mailHost + ":80": e.coord.HTTPAddr().String(),
	}
	resolver, err := httpproxy.New(httpproxy.Config{Dialer: namesOnly(routes), Logger: log.With("service", "resolver")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go resolver.Serve(ln)
	t.Cleanup(func() { resolver.Close() })
	e.resolver = ln.Addr().String()
	return e
}

// registered reports whether n services are published.
func registered(p *localproxy.Proxy, n int) bool {
	regs := p.Client().Registrations()
	ok := 0
	for _, r := range regs {
		if r.Err == nil && r.URL != "" {
			ok++
		}
	}
	return ok == n
}

// namesOnly dials the mapped host:port pairs and refuses the rest without
// resolving anything.
type namesOnly map[string]string

func (m namesOnly) DialTarget(ctx context.Context, target string) (net.Conn, error) {
	to, ok := m[strings.ToLower(target)]
	if !ok {
		return nil, &httpproxy.DialError{Status: http.StatusForbidden, Reason: fmt.Sprintf("%s: %v", target, errNotTestSite)}
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", to)
}

// testExposed runs the same pages with the sites exposed through the
// tunnel's reverse direction, over coordinator's HTTPS and HTTP ports.
func testExposed(t *testing.T, b browserSpec, bin string) {
	e := newExposedEnv(t)
	rec := runChain(t, b, bin, e.site, e.resolver, e.ca.certPEM)
	for _, scheme := range []string{"https", "http"} {
		t.Run(scheme, func(t *testing.T) {
			checkVideo(t, rec, scheme)
			checkMail(t, rec, scheme)
			// The app gets HTTP/1.1 whatever the browser spoke to
			// coordinator: HTTP/2 on the HTTPS port.
			checkProtocols(t, rec, scheme, "HTTP/1.1")
			checkNextHop(t, e.site.verdicts(b.name), scheme, map[string]string{"https": "h2", "http": "http/1.1"}[scheme])
		})
	}
	if n := strings.Count(e.logs.String(), `msg="reverse session"`); n < 4 {
		t.Errorf("localproxy logged %d reverse sessions, want the browser's (at least 4)", n)
	}
}

// checkNextHop: the mail page of the scheme came to the browser over want
// (the page's performance entry: "h2", "http/1.1"); its websocket, which
// checkMail checks, took an HTTP/1.1 connection of its own, since
// coordinator does not offer websockets over HTTP/2 (RFC 8441).
func checkNextHop(t *testing.T, vs []verdict, scheme, want string) {
	n := 0
	for _, v := range vs {
		if v.Page != "mail" || !strings.HasPrefix(v.URL, scheme+"://") {
			continue
		}
		n++
		if got := v.Checks["nextHopProtocol"]; got != want {
			t.Errorf("%s came over %v, want %s", v.URL, got, want)
		}
	}
	if n == 0 {
		t.Errorf("no %s mail page reported", scheme)
	}
}
