package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"quictunnel/e2e/natlab"
)

// The NAT suite runs the real binaries in a NAT lab (e2e/natlab,
// docs/natlab.md): localproxy on the private host behind the NAT, the
// reporter on pub1, coordinator on pub2, a dial-back worker (coordinator
// --role dialback) on pub3 and the target web site on pub4, so that the
// dial-back comes from an address localproxy never talked to before its
// punch.

// natSetup is one lab with the services running.
type natSetup struct {
	lab                          *natlab.Lab
	reporter, coord, worker, app *natlab.Process
	proxy                        *natlab.Process
	target                       string // the web site's base URL
	client                       *http.Client
}

type natOpts struct {
	lab natlab.Options
	// v6 makes every service address IPv6.
	v6 bool
	// noWorker runs no dial-back worker: coordinator dials back itself.
	noWorker bool
	// keepalive is NAT_KEEP_ALIVE_INTERVAL for the reporter and localproxy
	// (milliseconds; 0 keeps the defaults; -1 makes localproxy's QUIC
	// keepalive as rare as it goes, so idle mappings are lost).
	keepalive int
}

func startNAT(t *testing.T, o natOpts) *natSetup {
	t.Helper()
	l := natlab.New(t, o.lab)
	bin := binaries(t)
	certs, err := filepath.Abs(certsDir())
	if err != nil {
		t.Fatal(err)
	}
	addr := func(h *natlab.Host, port uint16) string {
		if o.v6 {
			return h.AddrPort6(port).String()
		}
		return h.AddrPort4(port).String()
	}
	withKeepalive := func(cmd string, args ...string) (string, []string) {
		switch {
		case o.keepalive == 0:
			return cmd, args
		case o.keepalive < 0:
			if strings.HasSuffix(cmd, "localproxy") {
				args = append(args, "--keepalive-interval", "60000")
			}
			return cmd, args
		}
		return "env", append([]string{fmt.Sprintf("NAT_KEEP_ALIVE_INTERVAL=%d", o.keepalive), cmd}, args...)
	}
	s := &natSetup{lab: l}
	name, args := withKeepalive(filepath.Join(bin, "reporter"), "--listen", ":3478", "--probe-listen", ":3479",
		"--log-level", "debug") // per-client keepalive lines are at Debug
	s.reporter = l.Public(1).Start(t, name, args...)
	coordAddr := addr(l.Public(2), 4433)
	s.coord = l.Public(2).Start(t, filepath.Join(bin, "coordinator"), "--listen", ":4433",
		"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
		"--token", "lab-token", "--worker-token", "lab-worker-token")
	if !o.noWorker {
		s.worker = l.Public(3).Start(t, filepath.Join(bin, "coordinator"), "--role", "dialback", "--listen", ":4434",
			"--coordinator", coordAddr, "--worker-token", "lab-worker-token", "--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost",
			"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"))
	}
	s.app = l.Public(4).Start(t, filepath.Join(bin, "demoapp"), "--listen", addr(l.Public(4), 8080))
	s.target = "http://" + addr(l.Public(4), 8080)
	if !o.noWorker {
		waitLog(t, s.coord, "dial-back worker connected")
	}
	name, args = withKeepalive(filepath.Join(bin, "localproxy"), "--listen", "127.0.0.1:8118",
		"--coordinator", coordAddr, "--reporter", addr(l.Public(1), 3478), "--token", "lab-token",
		"--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost")
	s.proxy = l.Client().Start(t, name, args...)
	waitLog(t, s.proxy, "connected to coordinator")
	proxyURL := &url.URL{Scheme: "http", Host: "127.0.0.1:8118"}
	s.client = &http.Client{
		Timeout: 20 * time.Second, // a hang fails the test instead of stalling it
		Transport: &http.Transport{
			Proxy: http.ProxyURL(proxyURL),
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return l.Client().DialTCP(ctx, addr) // inside the client's namespace
			},
			DisableKeepAlives: true, // every request a new session
		},
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []struct {
				name string
				p    *natlab.Process
			}{{"localproxy", s.proxy}, {"coordinator", s.coord}, {"worker", s.worker}, {"reporter", s.reporter}} {
				if p.p != nil {
					t.Logf("%s output:\n%s", p.name, p.p.Output())
				}
			}
		}
	})
	return s
}

// blockWorker makes the NAT drop every UDP packet from the dial-back
// worker: no dial-back gets in, sessions are relayed.
func (s *natSetup) blockWorker(t *testing.T) {
	t.Helper()
	block := s.lab.NAT().Command(t.Context(), "iptables", "-I", "FORWARD", "-i", "wan", "-p", "udp",
		"-s", s.lab.Public(3).IPv4.String(), "-j", "DROP")
	if out, err := block.CombinedOutput(); err != nil {
		t.Fatalf("iptables: %v\n%s", err, out)
	}
}

// downloadAcrossRemap downloads size bytes from the web site and, after
// the first MiB, makes the NAT map the client anew (Lab.RemapPorts). It
// returns what the rest of the download gave: the bytes read after the
// remap, and how it ended.
func (s *natSetup) downloadAcrossRemap(t *testing.T, size int64) (int64, error) {
	t.Helper()
	resp, err := s.client.Get(fmt.Sprintf("%s/bytes?n=%d", s.target, size))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := s.lab.RemapPorts(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n, err := io.Copy(io.Discard, resp.Body)
	t.Logf("download ended %v after the remap, %d more bytes: %v", time.Since(start).Round(time.Millisecond), n, err)
	return n, err
}

// stalledDownloadEnds checks that a dial-back session whose NAT mapping is
// gone ends with an error, not at the HTTP client's timeout (20 s; the
// session would hang until QUIC's 30 s idle timeout). The download (1 GiB)
// is more than the connection holds in flight: it is still running when
// the NAT maps the client anew.
func (s *natSetup) stalledDownloadEnds(t *testing.T) {
	t.Helper()
	_, err := s.downloadAcrossRemap(t, 1<<30)
	var ne net.Error
	switch {
	case err == nil:
		t.Fatalf("the download finished across the remap: the dial-back connection should have lost its path")
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("the stalled download hung until the HTTP client's timeout: %v", err)
	}
}

// waitLog waits (bounded) until p has written want.
func waitLog(t *testing.T, p *natlab.Process, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(p.Output(), want) {
		select {
		case <-p.Done():
			t.Fatalf("process exited before logging %q:\n%s", want, p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the log after 15s:\n%s", want, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// get fetches path from the web site through localproxy and checks the
// answer came from the site; it returns how long it took.
func (s *natSetup) get(t *testing.T, path string) time.Duration {
	t.Helper()
	start := time.Now()
	resp, err := s.client.Get(s.target + path)
	if err != nil {
		t.Fatalf("GET %s through localproxy: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	var echo struct{ Path string }
	if err == nil {
		err = json.Unmarshal(body, &echo)
	}
	if err != nil || resp.StatusCode != http.StatusOK || echo.Path != path {
		t.Fatalf("GET %s: status %d, %v, body %.300s", path, resp.StatusCode, err, body)
	}
	return time.Since(start)
}

// countLog counts s in p's output, first waiting (bounded) for at least
// want occurrences: a session's log line follows its response.
func countLog(p *natlab.Process, s string, want int) int {
	for deadline := time.Now().Add(5 * time.Second); strings.Count(p.Output(), s) < want && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	return strings.Count(p.Output(), s)
}

func TestNAT(t *testing.T) {
	t.Run("endpoint-independent: dial-back from a third host after a punch", func(t *testing.T) {
		t.Parallel()
		s := startNAT(t, natOpts{})
		for i := range 3 {
			s.get(t, fmt.Sprintf("/eim/%d", i))
		}
		if n := countLog(s.worker, `outcome="ok (dial-back)"`, 3); n != 3 {
			t.Errorf("worker carried %d sessions over dial-back, want 3", n)
		}
		if n := countLog(s.coord, "relay", 0); n != 0 {
			t.Errorf("coordinator relayed: %d mentions of relay in its log", n)
		}
		if !strings.Contains(s.proxy.Output(), `nat_mapping="endpoint-independent`) {
			t.Errorf("localproxy did not report an endpoint-independent mapping")
		}
		waitLog(t, s.proxy, `msg="NAT behaviour"`)
		if !strings.Contains(s.proxy.Output(), `filtering="address and port dependent`) {
			t.Errorf("localproxy did not measure the NAT's port-restricted filtering")
		}
		if !strings.Contains(s.worker.Output(), "punch_source="+s.lab.WANAddr().String()+":") {
			t.Errorf("the worker did not see localproxy's punch come from the NAT")
		}
	})

	t.Run("symmetric: dial-back to the punch's source", func(t *testing.T) {
		t.Parallel()
		s := startNAT(t, natOpts{lab: natlab.Options{NAT: natlab.Symmetric}})
		for i := range 3 {
			s.get(t, fmt.Sprintf("/sym/%d", i))
		}
		if !strings.Contains(s.proxy.Output(), `nat_mapping="address/port-dependent`) {
			t.Errorf("localproxy did not detect the symmetric NAT")
		}
		if n := countLog(s.worker, `outcome="ok (dial-back)"`, 3); n != 3 {
			t.Errorf("worker carried %d sessions over dial-back, want 3 (via the punch's source address)", n)
		}
	})

	t.Run("symmetric, inbound UDP from the dial-back host blocked: relay, and the log says why", func(t *testing.T) {
		t.Parallel()
		s := startNAT(t, natOpts{lab: natlab.Options{NAT: natlab.Symmetric}})
		s.blockWorker(t)
		for i := range 3 {
			d := s.get(t, fmt.Sprintf("/relay/%d", i))
			t.Logf("request %d: %v", i, d.Round(time.Millisecond))
		}
		if n := countLog(s.coord, "relay via worker", 3); n != 3 {
			t.Errorf("coordinator relayed %d sessions, want 3", n)
		}
		if !strings.Contains(s.worker.Output(), "dial-back failed: relaying this client's sessions through coordinator") ||
			!strings.Contains(s.worker.Output(), "reason=") {
			t.Errorf("the worker's log does not say why it relays")
		}
		if n := countLog(s.worker, "dial-back failed", 1); n != 1 {
			t.Errorf("relay decision logged %d times, want once", n)
		}
	})

	t.Run("conntrack flushed while idle", func(t *testing.T) {
		t.Parallel()
		s := startNAT(t, natOpts{})
		s.get(t, "/before")
		if err := s.lab.FlushConntrack(); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			d := s.get(t, fmt.Sprintf("/after/%d", i))
			t.Logf("request %d after the flush: %v", i, d.Round(time.Millisecond))
		}
	})

	for _, keepalive := range []int{1000, -1} {
		name := "UDP timeout 3s, NAT_KEEP_ALIVE_INTERVAL=1000: dial-back survives 10s idle"
		if keepalive < 0 {
			name = "UDP timeout 3s, no keepalive: after 10s idle the next request re-punches or relays"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := startNAT(t, natOpts{lab: natlab.Options{UDPTimeout: 3 * time.Second}, keepalive: keepalive})
			s.get(t, "/first")
			time.Sleep(10 * time.Second)
			d := s.get(t, "/after-idle")
			t.Logf("request after 10s idle: %v", d.Round(time.Millisecond))
			s.get(t, "/again")
			stale := countLog(s.worker, "dial-back connection went silent", 0)
			if keepalive > 0 {
				if n := countLog(s.worker, `outcome="ok (dial-back)"`, 3); n != 3 || stale != 0 {
					t.Errorf("with keepalive: %d dial-back sessions (want 3), %d stale connections (want 0)", n, stale)
				}
				if !strings.Contains(s.reporter.Output(), "interval=1s") {
					t.Errorf("reporter did not keep the client alive every second")
				}
				return
			}
			if stale == 0 && countLog(s.worker, "dial-back connection established", 2) < 2 {
				t.Errorf("without keepalive the idle dial-back connection should have been found dead and replaced")
			}
		})
	}

	t.Run("NAT maps the client anew during a download: the stalled session ends, the next ones dial back anew", func(t *testing.T) {
		t.Parallel()
		s := startNAT(t, natOpts{})
		s.get(t, "/before")
		s.stalledDownloadEnds(t)
		waitLog(t, s.proxy, "closed the dial-back connections that came through the old NAT mapping")
		if !strings.Contains(s.proxy.Output(), `msg="public address changed; telling coordinator"`) {
			t.Errorf("localproxy did not log its new public address")
		}
		for i := range 3 {
			d := s.get(t, fmt.Sprintf("/after/%d", i))
			t.Logf("request %d after the remap: %v", i, d.Round(time.Millisecond))
		}
		if strings.Contains(s.worker.Output(), "dial-back connection went silent") {
			t.Errorf("the worker found the old dial-back connection silent: localproxy's close did not reach it")
		}
		if n := countLog(s.worker, "dial-back connection established", 2); n != 2 {
			t.Errorf("worker established %d dial-back connections, want 2 (the second to the new mapping)", n)
		}
		if n := countLog(s.worker, `outcome="ok (dial-back)"`, 4); n < 4 {
			t.Errorf("worker carried %d sessions over dial-back, want the 4 short ones at least", n)
		}
	})

	for _, noWorker := range []bool{false, true} {
		dialer := "worker"
		if noWorker {
			dialer = "coordinator"
		}
		t.Run("NAT maps the client anew while idle: the next session is dialed back at once by the "+dialer+", not relayed", func(t *testing.T) {
			t.Parallel()
			s := startNAT(t, natOpts{keepalive: 1000, noWorker: noWorker})
			dialBacks := s.worker
			if noWorker {
				dialBacks = s.coord
			}
			s.get(t, "/before")
			if err := s.lab.RemapPorts(); err != nil {
				t.Fatal(err)
			}
			// localproxy's keepalive (every second here) moves the control
			// connection to the new mapping; coordinator then sees the
			// client at its new port. No log says when: 3 s is ample.
			time.Sleep(3 * time.Second)
			d := s.get(t, "/after")
			t.Logf("request after the remap: %v", d.Round(time.Millisecond))
			if n := countLog(dialBacks, "dialing back anew", 1); n != 1 {
				t.Errorf("the %s did not see the client's new address (%d mentions)", dialer, n)
			}
			if n := countLog(dialBacks, "dial-back connection established", 2); n != 2 {
				t.Errorf("the %s established %d dial-back connections, want 2", dialer, n)
			}
			if out := dialBacks.Output(); strings.Contains(out, "went silent") || strings.Contains(out, "(relay)") {
				t.Errorf("the %s waited for the old dial-back connection to go silent and relayed", dialer)
			}
		})
	}

	t.Run("symmetric NAT maps the client anew during a download: the silent dial-back connection is closed", func(t *testing.T) {
		t.Parallel()
		// A keepalive of 1 s: a live dial-back connection hears from its
		// peer within it, so the silent one is found in 4 s.
		s := startNAT(t, natOpts{lab: natlab.Options{NAT: natlab.Symmetric}, keepalive: 1000})
		s.get(t, "/before")
		s.stalledDownloadEnds(t)
		waitLog(t, s.proxy, "closed the dial-back connections that stopped answering")
		for i := range 3 {
			s.get(t, fmt.Sprintf("/after/%d", i))
		}
		if n := countLog(s.worker, "dial-back connection established", 2); n != 2 {
			t.Errorf("worker established %d dial-back connections, want 2 (the second through the new mapping)", n)
		}
	})

	t.Run("NAT maps the client anew during a relayed download: the control connection follows, the download completes", func(t *testing.T) {
		t.Parallel()
		s := startNAT(t, natOpts{lab: natlab.Options{NAT: natlab.Symmetric}})
		s.blockWorker(t)
		s.get(t, "/relayed")
		const size = 64 << 20
		n, err := s.downloadAcrossRemap(t, size)
		if err != nil || n != size-1<<20 {
			t.Fatalf("relayed download across the remap: %d of %d more bytes, %v", n, size-1<<20, err)
		}
		if n := countLog(s.coord, "relay via worker", 2); n != 2 {
			t.Errorf("coordinator relayed %d sessions, want 2", n)
		}
		s.get(t, "/after")
	})

	t.Run("IPv6 behind a stateful firewall", func(t *testing.T) {
		t.Parallel()
		s := startNAT(t, natOpts{lab: natlab.Options{IPv6: natlab.IPv6Firewall}, v6: true})
		for i := range 3 {
			s.get(t, fmt.Sprintf("/v6/%d", i))
		}
		if n := countLog(s.worker, `outcome="ok (dial-back)"`, 3); n != 3 {
			t.Errorf("worker carried %d sessions over dial-back, want 3", n)
		}
		if !strings.Contains(s.worker.Output(), "addr=[2001:db8:1::2]:") {
			t.Errorf("the dial-back did not go to the client's own IPv6 address")
		}
		waitLog(t, s.proxy, `msg="NAT behaviour"`)
		if !strings.Contains(s.proxy.Output(), `filtering="address and port dependent`) {
			t.Errorf("localproxy did not measure the firewall's filtering")
		}
	})

	t.Run("IPv6 behind NAT66", func(t *testing.T) {
		t.Parallel()
		s := startNAT(t, natOpts{lab: natlab.Options{IPv6: natlab.IPv6NAT66}, v6: true})
		for i := range 3 {
			s.get(t, fmt.Sprintf("/nat66/%d", i))
		}
		if n := countLog(s.worker, `outcome="ok (dial-back)"`, 3); n != 3 {
			t.Errorf("worker carried %d sessions over dial-back, want 3", n)
		}
		if want := "punch_source=[" + s.lab.WANAddr6().String() + "]:"; !strings.Contains(s.worker.Output(), want) {
			t.Errorf("the worker did not see the punch come from the NAT's IPv6 address (%s)", want)
		}
		if !strings.Contains(s.proxy.Output(), `nat_mapping="endpoint-independent`) {
			t.Errorf("localproxy did not report an endpoint-independent mapping")
		}
	})

	t.Run("reporter forgets a client that went away", func(t *testing.T) {
		t.Parallel()
		s := startNAT(t, natOpts{keepalive: 500})
		// A client that never answered a ping is forgotten at its first
		// miss; one that did, after 3.
		waitLog(t, s.reporter, "keepalive confirmed: client answered a ping")
		if err := s.lab.RemoveHost(s.lab.Client()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitLog(t, s.reporter, "keepalive stopped: client stopped answering")
		t.Logf("reporter stopped %v after the client's namespace was deleted (interval 500ms, 3 misses)", time.Since(start).Round(time.Millisecond))
		if !strings.Contains(s.reporter.Output(), "missed=3") {
			t.Errorf("reporter did not stop after 3 missed pings")
		}
	})
}
