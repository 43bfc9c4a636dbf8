package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"quictunnel/e2e/natlab"
)

// The NAT-lab fault tests run the real binaries in network namespaces:
// coordinator on pub1 (198.51.100.10), localproxy on the client behind the
// NAT, targets on other public hosts. Nothing touches the root namespace.

// natLab is coordinator and localproxy running in a NAT lab.
type natLab struct {
	l            *natlab.Lab
	coord, proxy *natlab.Process
	coordMetrics string // on pub1, reached from pub1's namespace
	proxyAddr    string // on the client's loopback, reached from the client's namespace
	proxyMetrics string
}

const (
	natCoordPort   = 4433
	natMetricsPort = 9100
	natProxyPort   = 8118
)

// startNATLab builds a lab and starts coordinator on pub1 and localproxy on
// the client, waiting until localproxy is connected.
func startNATLab(t *testing.T) *natLab {
	t.Helper()
	l := natlab.New(t, natlab.Options{})
	bins := binaries(t)
	certs, err := filepath.Abs(certsDir())
	if err != nil {
		t.Fatal(err)
	}
	pub1 := l.Public(1)
	n := &natLab{l: l, coordMetrics: pub1.AddrPort4(natMetricsPort).String(),
		proxyAddr: "127.0.0.1:" + strconv.Itoa(natProxyPort), proxyMetrics: "127.0.0.1:" + strconv.Itoa(natMetricsPort)}
	n.coord = pub1.Start(t, filepath.Join(bins, "coordinator"), "--listen", pub1.AddrPort4(natCoordPort).String(),
		"--token", binToken, "--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
		"--metrics-listen", n.coordMetrics, "--reporter-listen", pub1.AddrPort4(3478).String())
	n.proxy = l.Client().Start(t, filepath.Join(bins, "localproxy"), "--listen", n.proxyAddr,
		"--coordinator", pub1.AddrPort4(natCoordPort).String(), "--reporter", pub1.AddrPort4(3478).String(), "--token", binToken, "--ca", filepath.Join(certs, "ca.pem"),
		"--server-name", "localhost", "--metrics-listen", n.proxyMetrics, "--name", "behind-nat")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("coordinator output:\n%s", n.coord.Output())
			t.Logf("localproxy output:\n%s", n.proxy.Output())
		}
	})
	waitFor(t, "localproxy behind the NAT connected", func() bool {
		v, err := n.metric(l.Client(), n.proxyMetrics, "quictunnel_coordinator_connected")
		return err == nil && v == 1
	})
	return n
}

// metric reads one unlabelled sample from the /metrics page at addr,
// connecting from h's namespace.
func (n *natLab) metric(h *natlab.Host, addr, name string) (float64, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, a string) (net.Conn, error) {
		return h.DialTCP(ctx, a)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return parseMetric(resp.Body, name)
}

// proxyTransport is a transport that uses localproxy from the client's
// namespace.
func (n *natLab) proxyTransport(t *testing.T) *http.Transport {
	tr := &http.Transport{
		Proxy:             http.ProxyURL(&url.URL{Scheme: "http", Host: n.proxyAddr}),
		DialContext:       func(ctx context.Context, _, a string) (net.Conn, error) { return n.l.Client().DialTCP(ctx, a) },
		DisableKeepAlives: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// serveOn serves h on ln until the test ends.
func serveOn(t *testing.T, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	t.Cleanup(func() { srv.Close(); wg.Wait() })
}

// lossyTransferEnv sets the size in MiB of TestLossyLinkTransfer's
// download. The default is small because the link, not the tunnel, sets
// the pace: with 5% of the packets lost each way and a 100 ms round trip,
// loss-based congestion control (QUIC's, like TCP's) moves about 0.1 MB/s,
// so the 100 MiB of issue 7 take about 20 minutes:
//
//	QUICTUNNEL_LOSSY_MIB=100 go test -race -run TestLossyLinkTransfer -timeout 40m ./e2e/
const lossyTransferEnv = "QUICTUNNEL_LOSSY_MIB"

// lossyTransferDefault is the download's size without QUICTUNNEL_LOSSY_MIB.
const lossyTransferDefault = 3

// TestLossyLinkTransfer downloads through the tunnel while the link
// between the NAT and the internet loses 5% of the packets and delays them
// by 50 ms, each way, and checks every byte (sha256). The size is 3 MiB,
// or QUICTUNNEL_LOSSY_MIB.
func TestLossyLinkTransfer(t *testing.T) {
	t.Parallel()
	mib := lossyTransferDefault
	if s := os.Getenv(lossyTransferEnv); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("%s=%q: want a positive number of MiB", lossyTransferEnv, s)
		}
		mib = v
	}
	size := int64(mib) << 20
	n := startNATLab(t)
	// The target is on pub3, on pub1's segment: only the client's side of
	// the path is impaired.
	pub3 := n.l.Public(3)
	ln, err := pub3.ListenTCP(pub3.AddrPort4(8080).String())
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, ln, bulkHandler())
	how := impairWAN(t, n.l, impairment{loss: 0.05, delay: 50 * time.Millisecond})
	t.Logf("link impaired with %s", how)

	client := &http.Client{Transport: n.proxyTransport(t)}
	ctx, cancel := context.WithTimeout(t.Context(), 35*time.Minute)
	defer cancel()
	begin := time.Now()
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/bytes?n=%d", pub3.AddrPort4(8080), size), nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("download through the lossy link: %v", err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	got, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Fatalf("download through the lossy link: %v after %d of %d bytes", err, got, size)
	}
	took := time.Since(begin)
	if sum := hex.EncodeToString(h.Sum(nil)); got != size || sum != patternSHA(size) {
		t.Fatalf("received %d bytes with sha256 %s; want %d bytes with sha256 %s", got, sum, size, patternSHA(size))
	}
	t.Logf("%d MiB arrived intact in %v (%.2f MB/s)", mib, took.Round(time.Millisecond), float64(size)/took.Seconds()/1e6)
}

// TestHalfOpenPeerCleanedUp makes the client vanish without closing: the
// home router drops every packet while a tunnel session is open. The
// keepalives go unanswered, and within QUIC's idle timeout coordinator
// must drop the client and its session (closing the target's connection),
// and localproxy must close the browser's connection; once the router
// passes packets again, localproxy reconnects and serves.
func TestHalfOpenPeerCleanedUp(t *testing.T) {
	t.Parallel()
	n := startNATLab(t)
	pub2 := n.l.Public(2)
	ln, err := pub2.ListenTCP(pub2.AddrPort4(7000).String())
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	})
	defer wg.Wait()
	defer ln.Close()

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	browser, err := n.l.Client().DialTCP(ctx, n.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer browser.Close()
	target := pub2.AddrPort4(7000).String()
	fmt.Fprintf(browser, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	status := make([]byte, len("HTTP/1.1 200"))
	if _, err := io.ReadFull(browser, status); err != nil || string(status) != "HTTP/1.1 200" {
		t.Fatalf("CONNECT: %q %v", status, err)
	}
	var upstream net.Conn
	select {
	case upstream = <-accepted:
	case <-ctx.Done():
		t.Fatal("the target was never dialed")
	}
	defer upstream.Close()
	coordSays := func(name string) float64 {
		v, err := n.metric(n.l.Public(1), n.coordMetrics, "quictunnel_"+name)
		if err != nil {
			return -1
		}
		return v
	}
	if c, s := coordSays("clients_connected"), coordSays("sessions_active"); c != 1 || s != 1 {
		t.Fatalf("before: coordinator has %v clients and %v sessions, want 1 and 1", c, s)
	}

	// The client vanishes: the router drops everything, both ways.
	ipt, err := sbinTool("iptables")
	if err != nil {
		t.Fatal(err)
	}
	if err := run(ctx, n.l.NAT(), ipt, "-I", "FORWARD", "1", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	vanished := time.Now()
	// QUIC's idle timeout is 30 s, counted from the last packet received
	// or the first keepalive sent after it (10 s): at most 40 s. Allow 20
	// more.
	const bound = 60 * time.Second
	waitUntil(t, bound, "coordinator to drop the vanished client and its session", func() bool {
		return coordSays("clients_connected") == 0 && coordSays("sessions_active") == 0
	})
	coordTook := time.Since(vanished)
	// A session that fails is reset, not closed cleanly, on both sides
	// (docs/design.md): either ends the connection.
	upstream.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, upErr := io.Copy(io.Discard, upstream)
	var ne net.Error
	if errors.As(upErr, &ne) && ne.Timeout() {
		t.Errorf("coordinator left the target's connection open after dropping the session")
	}
	browser.SetReadDeadline(vanished.Add(bound))
	_, browserErr := io.Copy(io.Discard, browser)
	if errors.As(browserErr, &ne) && ne.Timeout() {
		t.Errorf("localproxy left the browser's connection open %v after coordinator vanished", bound)
	}
	proxyTook := time.Since(vanished)
	t.Logf("coordinator dropped the client and its session %v after it vanished (target connection: %v); "+
		"localproxy ended the browser's connection after %v (%v)",
		coordTook.Round(time.Millisecond), upErr, proxyTook.Round(time.Millisecond), browserErr)

	if err := run(ctx, n.l.NAT(), ipt, "-D", "FORWARD", "1"); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: n.proxyTransport(t), Timeout: 10 * time.Second}
	pub3 := n.l.Public(3)
	web, err := pub3.ListenTCP(pub3.AddrPort4(8080).String())
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, web, bulkHandler())
	waitUntil(t, bound, "a request once the router passes packets again", func() bool {
		resp, err := client.Get("http://" + pub3.AddrPort4(8080).String() + "/back")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && strings.HasPrefix(string(b), "GET 0 ")
	})
}
