package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"quictunnel/e2e/natlab"
)

// The TCP-transport suite: the real binaries in a NAT lab whose client
// cannot use UDP (or only an HTTP proxy), localproxy with its default
// --transport auto. Coordinator on pub2 serves QUIC and TCP on port 4433,
// the web site runs on pub4, tinyproxy (the corporate proxy) on pub3.

// tcpLab is one lab with coordinator, the web site and the reporter
// running; localproxy is started by the test.
type tcpLab struct {
	lab                  *natlab.Lab
	coord, app, reporter *natlab.Process
	certs, bin           string
	target               string // the web site, host:port
	v6                   bool   // localproxy reaches coordinator and the reporter over IPv6
}

func startTCPLab(t *testing.T, v6 bool) *tcpLab {
	t.Helper()
	o := natlab.Options{}
	if v6 {
		o.IPv6 = natlab.IPv6NAT66
	}
	l := natlab.New(t, o)
	certs, err := filepath.Abs(certsDir())
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpLab{lab: l, certs: certs, bin: binaries(t), v6: v6}
	s.reporter = l.Public(1).Start(t, filepath.Join(s.bin, "reporter"), "--listen", ":3478", "--probe-listen", ":3479")
	s.coord = l.Public(2).Start(t, filepath.Join(s.bin, "coordinator"), "--listen", ":4433", "--tcp-listen", ":4433",
		"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
		"--token", "lab-token", "--port-range", "20000-20010", "--http", ":8080", "--domain", "lab.test")
	s.target = l.Public(4).AddrPort4(8080).String()
	s.app = l.Public(4).Start(t, filepath.Join(s.bin, "demoapp"), "--listen", s.target)
	// The app localproxy exposes, on the client's own loopback.
	l.Client().Start(t, filepath.Join(s.bin, "demoapp"), "--listen", localApp)
	waitLog(t, s.coord, "coordinator ready")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("coordinator output:\n%s", s.coord.Output())
		}
	})
	return s
}

// localApp is the client's own app that localproxy exposes.
const localApp = "127.0.0.1:8081"

// localproxy starts localproxy in the client namespace, exposing localApp
// as TCP service on coordinator's port 20001 and as HTTP app
// web.lab.test on its port 8080, and returns it with
// the time it took to log "localproxy ready" (bounded by wait).
func (s *tcpLab) localproxy(t *testing.T, wait time.Duration, args ...string) (*natlab.Process, time.Duration) {
	t.Helper()
	return s.localproxyEnv(t, wait, nil, args...)
}

// localproxyEnv is localproxy with env (NAME=VALUE) added to its
// environment.
func (s *tcpLab) localproxyEnv(t *testing.T, wait time.Duration, env []string, args ...string) (*natlab.Process, time.Duration) {
	t.Helper()
	coord, reporter := s.lab.Public(2).AddrPort4(4433).String(), s.lab.Public(1).AddrPort4(3478).String()
	if s.v6 {
		coord, reporter = s.lab.Public(2).AddrPort6(4433).String(), s.lab.Public(1).AddrPort6(3478).String()
	}
	args = append([]string{"--listen", "127.0.0.1:8118", "--coordinator", coord,
		"--reporter", reporter, "--token", "lab-token",
		"--ca", filepath.Join(s.certs, "ca.pem"), "--server-name", "localhost",
		"--expose-tcp", "site=" + localApp + ":20001", "--expose", "web=" + localApp}, args...)
	start := time.Now()
	name := filepath.Join(s.bin, "localproxy")
	if len(env) > 0 {
		name, args = "env", append(append(env, name), args...)
	}
	p := s.lab.Client().Start(t, name, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("localproxy output:\n%s", p.Output())
		}
	})
	for !strings.Contains(p.Output(), "localproxy ready") {
		select {
		case <-p.Done():
			return p, 0
		default:
		}
		if time.Since(start) > wait {
			return p, 0
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p, time.Since(start)
}

// iptables runs iptables in h's namespace.
func iptables(t *testing.T, h *natlab.Host, args ...string) {
	t.Helper()
	netfilter(t, h, "iptables", args...)
}

// netfilter runs tool (iptables or ip6tables) in h's namespace.
func netfilter(t *testing.T, h *natlab.Host, tool string, args ...string) {
	t.Helper()
	if out, err := h.Command(t.Context(), tool, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}
}

// proxyGet fetches the web site's path through localproxy in absolute
// form, and through a CONNECT tunnel, checking each answer.
func (s *tcpLab) proxyGet(t *testing.T, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, connect := range []bool{false, true} {
		c, err := s.lab.Client().DialTCP(ctx, "127.0.0.1:8118")
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		req := "GET http://" + s.target + path + " HTTP/1.1\r\nHost: " + s.target + "\r\nConnection: close\r\n\r\n"
		if connect {
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", s.target, s.target)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != http.StatusOK {
				c.Close()
				t.Fatalf("CONNECT %s: %v %v", s.target, resp, err)
			}
			req = "GET " + path + " HTTP/1.1\r\nHost: " + s.target + "\r\nConnection: close\r\n\r\n"
		}
		io.WriteString(c, req)
		checkSiteAnswer(t, br, path)
		c.Close()
	}
}

// checkSiteAnswer reads the web site's answer to path from br.
func checkSiteAnswer(t *testing.T, br *bufio.Reader, path string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var echo struct{ Path string }
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		err = json.Unmarshal(body, &echo)
	}
	if err != nil || resp.StatusCode != http.StatusOK || echo.Path != path {
		t.Fatalf("GET %s: status %d, %v, body %.300s", path, resp.StatusCode, err, body)
	}
}

// exposedGet fetches path from the exposed TCP service and the exposed
// HTTP app, from the internet.
func (s *tcpLab) exposedGet(t *testing.T, path string) {
	t.Helper()
	for _, via := range []struct {
		port uint16
		host string
	}{{20001, "site"}, {8080, "web.lab.test"}} {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		c, err := s.lab.Public(1).DialTCP(ctx, s.lab.Public(2).AddrPort4(via.port).String())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, via.host)
		checkSiteAnswer(t, bufio.NewReader(c), path)
		c.Close()
	}
}

// get fetches path from addr, a server in the client's namespace.
func (s *tcpLab) get(t *testing.T, addr, path string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := s.lab.Client().DialTCP(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, addr)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s%s: %d %v", addr, path, resp.StatusCode, err)
	}
	return string(b)
}

// status reads localproxy's /status.
func (s *tcpLab) status(t *testing.T) map[string]any {
	t.Helper()
	var st map[string]any
	if err := json.Unmarshal([]byte(s.get(t, "127.0.0.1:8118", "/status")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestTransportUDPBlocked(t *testing.T) {
	dropUDP := []string{"-A", "OUTPUT", "!", "-o", "lo", "-p", "udp", "-j", "DROP"}
	for _, block := range []struct {
		name string
		// on the client (its own firewall, silently) or on the NAT (the
		// network: a port unreachable comes back)
		nat  bool
		v6   bool
		rule []string
	}{
		{"dropped by the client's firewall", false, false, dropUDP},
		{"rejected by the network", true, false, []string{"-I", "FORWARD", "-p", "udp", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"}},
		{"IPv6, dropped by the client's firewall", false, true, dropUDP},
	} {
		t.Run(block.name, func(t *testing.T) {
			t.Parallel()
			s := startTCPLab(t, block.v6)
			on, tool := s.lab.Client(), "iptables"
			if block.nat {
				on = s.lab.NAT()
			}
			if block.v6 {
				tool = "ip6tables"
			}
			netfilter(t, on, tool, block.rule...)
			p, took := s.localproxy(t, 10*time.Second, "--metrics-listen", "127.0.0.1:9100")
			if took == 0 {
				t.Fatalf("localproxy not ready within 10s")
			}
			t.Logf("ready over TCP %s after start", took.Round(time.Millisecond))
			if took > 3*time.Second {
				t.Errorf("ready %s after start, want within 3s", took.Round(time.Millisecond))
			}
			if n := strings.Count(p.Output(), "using the TCP transport"); n != 1 {
				t.Errorf("the fall-back to TCP logged %d times, want once", n)
			}
			st := s.status(t)
			if tr, _ := st["transport"].(string); !strings.HasPrefix(tr, "tcp (") {
				t.Errorf("status transport = %q, want tcp (why)", st["transport"])
			}
			if m := s.get(t, "127.0.0.1:9100", "/metrics"); !strings.Contains(m, `quictunnel_coordinator_transport{transport="tcp"} 1`) {
				t.Errorf("metrics do not show the TCP transport:\n%s", m)
			}
			s.proxyGet(t, "/over-tcp")
			// Both sessions (absolute form, CONNECT) rode localproxy's TCP
			// connection and ended cleanly.
			if n := countLog(s.coord, `outcome="ok (tcp)"`, 2); n != 2 || strings.Contains(s.coord.Output(), "error (tcp)") {
				t.Errorf("coordinator logged %d sessions ok over TCP, want 2 and no error", n)
			}
			waitLog(t, p, "tcp://")
			waitLog(t, p, `msg="service published" service=web`)
			s.exposedGet(t, "/exposed-over-tcp")

			if block.nat {
				return
			}
			// UDP opens again: within the first probe (5s after
			// connecting) new sessions go over QUIC.
			netfilter(t, on, tool, append([]string{"-D"}, dropUDP[1:]...)...)
			opened := time.Now()
			waitLog(t, p, "QUIC to coordinator works again")
			t.Logf("back on QUIC %s after UDP was let through", time.Since(opened).Round(time.Millisecond))
			if tr, _ := s.status(t)["transport"].(string); !strings.HasPrefix(tr, "quic (UDP from ") {
				t.Errorf("status transport = %q, want quic (UDP from ...)", tr)
			}
			s.proxyGet(t, "/over-quic")
			if n := countLog(s.coord, `outcome="ok (dial-back)"`, 2); n != 2 {
				t.Errorf("coordinator carried %d sessions over dial-back after the move to QUIC, want 2", n)
			}
		})
	}
}

// tinyproxy runs tinyproxy on h, port 8888, asking for user:pass.
func tinyproxy(t *testing.T, h *natlab.Host, user, pass string) {
	t.Helper()
	bin, err := lookTool("tinyproxy")
	if err != nil {
		t.Skipf("tinyproxy not installed (scripts/test-deps.sh installs it): %v", err)
	}
	conf := filepath.Join(t.TempDir(), "tinyproxy.conf")
	os.Chmod(filepath.Dir(conf), 0o755)
	body := fmt.Sprintf("User nobody\nGroup nogroup\nPort 8888\nListen %s\nTimeout 60\nMaxClients 20\nLogLevel Info\nBasicAuth %s %s\nConnectPort 4433\n",
		h.IPv4, user, pass)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	p := h.Start(t, bin, "-d", "-c", conf)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for {
		c, err := h.DialTCP(ctx, h.AddrPort4(8888).String())
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("tinyproxy does not listen: %v\n%s", err, p.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// lookTool finds a program in PATH or the sbin directories.
func lookTool(name string) (string, error) {
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/bin", "/sbin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, os.ErrNotExist)
}

// TestTransportThroughHTTPProxy: the client's only way out is an HTTP
// proxy asking for credentials.
func TestTransportThroughHTTPProxy(t *testing.T) {
	s := startTCPLab(t, false)
	proxy := s.lab.Public(3)
	tinyproxy(t, proxy, "corp", "s3cret")
	c := s.lab.Client()
	iptables(t, c, "-A", "OUTPUT", "-o", "lo", "-j", "ACCEPT")
	iptables(t, c, "-A", "OUTPUT", "-p", "tcp", "-d", proxy.IPv4.String(), "--dport", "8888", "-j", "ACCEPT")
	iptables(t, c, "-A", "OUTPUT", "-j", "REJECT")
	proxyURL := "http://corp:s3cret@" + proxy.AddrPort4(8888).String()

	t.Run("wrong credentials: one clear error", func(t *testing.T) {
		p, took := s.localproxy(t, 2*time.Second, "--upstream-proxy", "http://corp:wrong@"+proxy.AddrPort4(8888).String())
		if took != 0 {
			t.Fatalf("localproxy ready with wrong proxy credentials")
		}
		want := "upstream proxy http://corp:xxxxx@" + proxy.AddrPort4(8888).String() + " refused the credentials given (40"
		waitLog(t, p, want)
		p.Stop()
	})
	t.Run("through the proxy", func(t *testing.T) {
		p, took := s.localproxy(t, 10*time.Second, "--upstream-proxy", proxyURL)
		if took == 0 {
			t.Fatalf("localproxy not ready through the upstream proxy")
		}
		t.Logf("ready through the upstream proxy %s after start", took.Round(time.Millisecond))
		if strings.Contains(p.Output(), "s3cret") {
			t.Errorf("localproxy logged the proxy password")
		}
		s.proxyGet(t, "/via-corporate-proxy")
		p.Stop()
	})
	t.Run("through the proxy of $HTTPS_PROXY", func(t *testing.T) {
		p, took := s.localproxyEnv(t, 10*time.Second, []string{"HTTPS_PROXY=" + proxyURL, "NO_PROXY=example.org"})
		if took == 0 {
			t.Fatalf("localproxy not ready through the upstream proxy of $HTTPS_PROXY")
		}
		if !strings.Contains(p.Output(), `upstream_proxy=http://corp:xxxxx@`+proxy.AddrPort4(8888).String()) {
			t.Errorf("localproxy did not say it uses the proxy of $HTTPS_PROXY")
		}
		s.proxyGet(t, "/via-https-proxy-variable")
		waitLog(t, p, "tcp://")
		waitLog(t, p, `msg="service published" service=web`)
		s.exposedGet(t, "/exposed-via-corporate-proxy")
	})
}
