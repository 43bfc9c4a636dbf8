package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"quictunnel/internal/coordinator"
	"quictunnel/internal/demoapp"
	"quictunnel/quictun"
)

// TestHTTPSPublicPort runs the real coordinator with --http and --https
// and localproxy exposing the demo app: the app is reached over TLS by
// name with the https URL localproxy was given, sees X-Forwarded-Proto
// https (http on the plain port), websockets work over TLS, plain HTTP to
// the TLS port gets a clear 400, and SIGHUP serves a replaced certificate.
// The app is exposed with --host-header app=rewrite, so it sees its own
// address as Host.
func TestHTTPSPublicPort(t *testing.T) {
	quicPort, stunPort, proxyPort := freeUDPPort(t), freeUDPPort(t), freeTCPPort(t)
	appPort, httpPort, httpsPort := freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	certs, _ := filepath.Abs(certsDir())
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "https.pem"), filepath.Join(dir, "https-key.pem")
	copyFile(t, filepath.Join(certs, "coordinator.pem"), certFile)
	copyFile(t, filepath.Join(certs, "coordinator-key.pem"), keyFile)

	start(t, nil, "demoapp", "--listen", "127.0.0.1:"+strconv.Itoa(appPort))
	coord := start(t, nil, "coordinator", "--listen", "127.0.0.1:"+strconv.Itoa(quicPort),
		"--reporter-listen", "127.0.0.1:"+strconv.Itoa(stunPort), "--token", "https-token",
		"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
		"--http", "127.0.0.1:"+strconv.Itoa(httpPort), "--https", "127.0.0.1:"+strconv.Itoa(httpsPort),
		"--https-cert", certFile, "--https-key", keyFile, "--domain", "localhost")
	lp := start(t, nil, "localproxy", "--listen", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort), "--reporter", "127.0.0.1:"+strconv.Itoa(stunPort),
		"--token", "https-token", "--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost",
		"--expose", "app=127.0.0.1:"+strconv.Itoa(appPort), "--host-header", "app=rewrite", "--log-public-requests")
	wantURL := "https://app.localhost:" + strconv.Itoa(httpsPort) + "/"
	waitFor(t, "the https URL published", func() bool { return strings.Contains(lp.out.String(), "url="+wantURL) })

	httpsAddr := "127.0.0.1:" + strconv.Itoa(httpsPort)
	clientFor := func(caFile string) *http.Client {
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(filepath.Join(certs, caFile))
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			t.Fatalf("CA %s: %v", caFile, err)
		}
		// app.localhost is dialed at the test's own port; the name still
		// goes in SNI and Host, and the certificate is checked against it.
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
			},
		}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	echo := func(client *http.Client, url string) (*http.Response, demoapp.Echo) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		var e demoapp.Echo
		body, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
		}
		return resp, e
	}

	client := clientFor("ca.pem")
	resp, e := echo(client, wantURL+"over-tls?x=1")
	if resp.TLS == nil || resp.TLS.ServerName != "app.localhost" {
		t.Errorf("TLS state %+v", resp.TLS)
	}
	// --host-header app=rewrite: the app sees its own address as Host.
	if e.Path != "/over-tls" || e.Host != "127.0.0.1:"+strconv.Itoa(appPort) || e.Header["X-Forwarded-Proto"][0] != "https" ||
		!strings.Contains(e.Header["Forwarded"][0], "proto=https") || e.Header["X-Forwarded-Host"][0] != "app.localhost:"+strconv.Itoa(httpsPort) {
		t.Errorf("app saw %+v", e)
	}

	// coordinator's access log marks requests that came over TLS.
	waitFor(t, "the request's access-log line, with tls=true", func() bool {
		for line := range strings.Lines(coord.out.String()) {
			if strings.Contains(line, `target="app.localhost:`+strconv.Itoa(httpsPort)+`/over-tls?x=1" status=200`) {
				return strings.Contains(line, "tls=true")
			}
		}
		return false
	})
	// localproxy --log-public-requests: the same request in localproxy's
	// log.
	waitFor(t, "localproxy's line for the request, with tls=true", func() bool {
		for line := range strings.Lines(lp.out.String()) {
			if strings.Contains(line, `msg="public request" service=app remote=127.0.0.1:`) &&
				strings.Contains(line, `method=GET target="app.localhost:`+strconv.Itoa(httpsPort)+`/over-tls?x=1" status=200`) {
				return strings.Contains(line, "tls=true outcome=ok")
			}
		}
		return false
	})

	// The plain port still serves, and says http.
	req, _ := http.NewRequest("GET", "http://127.0.0.1:"+strconv.Itoa(httpPort)+"/plain", nil)
	req.Host = "app.localhost"
	if presp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		var pe demoapp.Echo
		json.NewDecoder(presp.Body).Decode(&pe)
		presp.Body.Close()
		if presp.StatusCode != 200 || pe.Header["X-Forwarded-Proto"][0] != "http" {
			t.Errorf("plain port: %d %+v", presp.StatusCode, pe)
		}
	}

	t.Run("websocket over TLS", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "wss://app.localhost:"+strconv.Itoa(httpsPort)+"/ws", &websocket.DialOptions{HTTPClient: client})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		for i := range 3 {
			msg := "frame " + strconv.Itoa(i)
			c.Write(ctx, websocket.MessageText, []byte(msg))
			if _, got, err := c.Read(ctx); err != nil || string(got) != msg {
				t.Fatalf("echo %q %v", got, err)
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	})

	t.Run("plain HTTP to the TLS port", func(t *testing.T) {
		c, err := net.Dial("tcp", httpsAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 400 || !strings.Contains(string(body), "https://") {
			t.Errorf("%d %q", resp.StatusCode, body)
		}
	})

	t.Run("SIGHUP serves a replaced certificate", func(t *testing.T) {
		// A bad file is refused and the certificate in use stays.
		os.WriteFile(certFile, []byte("not a certificate"), 0o600)
		coord.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, "the bad file logged", func() bool { return strings.Contains(coord.out.String(), "HTTPS certificate not reloaded") })
		echo(clientFor("ca.pem"), wantURL)

		copyFile(t, filepath.Join(certs, "other.pem"), certFile)
		copyFile(t, filepath.Join(certs, "other-key.pem"), keyFile)
		coord.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, "the reload logged", func() bool { return strings.Contains(coord.out.String(), "HTTPS certificate reloaded") })
		echo(clientFor("other-ca.pem"), wantURL)
		if _, err := clientFor("ca.pem").Get(wantURL); err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("the old CA still verifies the served certificate: %v", err)
		}
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestHTTPToHTTPS: with HTTPToHTTPS, the plain port answers every request
// (even for an unknown name, and before credentials are asked) with a 308
// to the same URL on the HTTPS port, and a client that follows it reaches
// the app over TLS.
func TestHTTPToHTTPS(t *testing.T) {
	cert, pool := loadCoordinatorCert(t)
	if _, err := coordinator.New(coordinator.Config{Listen: "127.0.0.1:0", Certificate: cert, Token: "t",
		HTTPListen: "127.0.0.1:0", HTTPToHTTPS: true}); err == nil {
		t.Fatal("HTTPToHTTPS without an HTTPS address was accepted")
	}
	l := &reverseLab{coordLog: &logBuffer{}}
	c, err := coordinator.New(coordinator.Config{
		Listen: "127.0.0.1:0", Certificate: cert, Token: "rev-token", ReporterListen: "127.0.0.1:0",
		HTTPListen: "127.0.0.1:0", HTTPSListen: "127.0.0.1:0", HTTPToHTTPS: true, Domain: "localhost",
		Logger: l.coordLog.logger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	l.coord, l.httpAddr, l.quicAddr = c, c.HTTPAddr().String(), c.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("coordinator log:\n%s", l.coordLog)
		}
	})
	l.addClient(t, "laptop", quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app", Local: startApp(t),
		BasicAuth: quictun.HashCredentials("alice", "s3cret")})
	httpsAddr := c.HTTPSAddr().String()
	_, httpsPort, _ := net.SplitHostPort(httpsAddr)

	noFollow := &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, host := range []string{"app.localhost", "app.localhost:" + strconv.Itoa(c.HTTPAddr().(*net.TCPAddr).Port), "nosuch.localhost"} {
		req, _ := http.NewRequest("POST", "http://"+l.httpAddr+"/p/q?x=1", strings.NewReader("body"))
		req.Host = host
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		name, _, _ := strings.Cut(host, ":")
		if want := "https://" + name + ":" + httpsPort + "/p/q?x=1"; resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != want {
			t.Errorf("Host %s: %d Location %q, want 308 to %s", host, resp.StatusCode, resp.Header.Get("Location"), want)
		}
	}

	follow := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if strings.HasSuffix(addr, ":"+httpsPort) {
				addr = httpsAddr
			} else {
				addr = l.httpAddr
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
	req, _ := http.NewRequest("GET", "http://app.localhost/follow", nil)
	req.SetBasicAuth("alice", "s3cret")
	resp, err := follow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e demoapp.Echo
	json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != 200 || resp.TLS == nil || e.Path != "/follow" || e.Header["X-Forwarded-Proto"][0] != "https" {
		t.Errorf("after the redirect: %d, TLS %v, app saw %+v", resp.StatusCode, resp.TLS != nil, e)
	}
}
