package e2e

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v2"
)

// needTool returns the path of a binary the test needs. Missing, the test
// is skipped locally and fails in CI, where scripts/test-deps.sh installs it.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed; scripts/test-deps.sh should have installed it", name)
		}
		t.Skipf("%s not installed (run scripts/test-deps.sh)", name)
	}
	return p
}

// freeUDPPort returns a UDP port that was free a moment ago, for a child
// process to bind. It comes from 30000-32767, below the kernel's ephemeral
// range, so sockets that tests running in parallel bind to port 0 cannot
// take it in between.
func freeUDPPort(t *testing.T) int {
	return freePort(t, func(addr string) (io.Closer, error) { return net.ListenPacket("udp", addr) })
}

// refusedAddr returns a loopback TCP address nothing listens on: a port
// from freePort, below the kernel's ephemeral range (32768-60999), so no
// listener on port 0, in this test or a parallel one, can take it later.
func refusedAddr(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freeTCPPort(t)))
}

// portsGiven are the ports freePort has handed out in this process: a
// port is free only until its test binds it, so two calls in a row could
// otherwise return the same one (as a reporter and a coordinator once got).
var portsGiven struct {
	sync.Mutex
	m map[int]bool
}

// freePort finds a port in 30000-32767 that open can bind and that it has
// not returned before.
func freePort(t *testing.T, open func(addr string) (io.Closer, error)) int {
	t.Helper()
	portsGiven.Lock()
	defer portsGiven.Unlock()
	if portsGiven.m == nil {
		portsGiven.m = make(map[int]bool)
	}
	for range 100 {
		port := 30000 + rand.IntN(2768)
		if portsGiven.m[port] {
			continue
		}
		if c, err := open(net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			c.Close()
			portsGiven.m[port] = true
			return port
		}
	}
	t.Fatal("no free port in 30000-32767")
	return 0
}

// startTurnserver starts coturn's turnserver as a plain STUN server on a
// free port below the kernel's ephemeral range (so no socket of a test
// running in parallel can take it first) and returns its address, or ""
// with its output logged if it does not answer within 5 seconds.
func startTurnserver(t *testing.T, bin string) string {
	t.Helper()
	port := 20000 + rand.IntN(10000)
	if pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err != nil {
		return ""
	} else {
		pc.Close()
	}
	// Its own database and pid file, so concurrent runs do not share (and
	// lock) the system-wide ones.
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls",
		"-L", "127.0.0.1", "-p", strconv.Itoa(port), "--log-file", "stdout", "--simple-log",
		"--db", filepath.Join(dir, "turndb"), "--pidfile", filepath.Join(dir, "turnserver.pid"))
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if !stunReady(addr, 5*time.Second) {
		t.Logf("turnserver on %s did not answer; output:\n%s", addr, out)
		cancel()
		return ""
	}
	return addr
}

// stunReady reports whether a STUN server answers a Binding request at
// addr within wait.
func stunReady(addr string, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		conn.Write(req.Raw)
		conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := conn.Read(buf); err == nil && stun.IsMessage(buf[:n]) {
			return true
		}
	}
	return false
}

// TestLocalproxyWithCoturn runs localproxy against coturn's turnserver, a
// standard STUN server, instead of our reporter: it must learn its public
// address from it (on loopback, its own socket address) and work.
func TestLocalproxyWithCoturn(t *testing.T) {
	bin := needTool(t, "turnserver")
	var addr string
	for attempt := 0; addr == "" && attempt < 3; attempt++ {
		addr = startTurnserver(t, bin)
	}
	if addr == "" {
		t.Fatal("turnserver never answered (see its output above)")
	}

	l := startLab(t, labOptions{reporter: addr})
	target := startTarget(t, "127.0.0.1", bulkHandler())
	resp, err := l.httpClient(t, nil, false).Get(target.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	want := l.proxy.TunnelAddr().(*net.UDPAddr).AddrPort()
	if got := l.proxy.Client().Stats().PublicAddr; got != want {
		t.Fatalf("public address from coturn = %v, want %v", got, want)
	}
}

// shiftingReporter is a STUN server that reports the true source address
// first and then moved, as a NAT that remapped the client would: the
// second address is moved (a bound, silent loopback socket, so dial-backs
// to it stay on this machine and go unanswered).
func shiftingReporter(t *testing.T, moved *net.UDPAddr) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for answered := 0; ; answered++ {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if req.Decode() != nil || req.Type != stun.BindingRequest {
				continue
			}
			mapped := from.(*net.UDPAddr)
			if answered > 0 {
				mapped = moved
			}
			resp := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: mapped.IP, Port: mapped.Port})
			pc.WriteTo(resp.Raw, from)
		}
	}()
	return pc.LocalAddr().String()
}

// TestIdleRestartNoticesNewPublicAddress: the idle timer re-runs the STUN
// query; a changed public address is logged and told to coordinator, and
// sessions keep working (coordinator falls back to the address it sees).
func TestIdleRestartNoticesNewPublicAddress(t *testing.T) {
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	moved := silent.LocalAddr().(*net.UDPAddr)
	l := startLab(t, labOptions{reporter: shiftingReporter(t, moved), idleRestart: 100 * time.Millisecond})
	target := startTarget(t, "127.0.0.1", bulkHandler())
	waitFor(t, "coordinator told of the new address", func() bool {
		// Told by AddrUpdate, or, if the re-check beat the first connection,
		// in the Hello itself.
		coord := l.coordLog.String()
		return strings.Contains(l.proxyLog.String(), "public address changed") &&
			(strings.Contains(coord, "client public address changed") || strings.Contains(coord, "public_addr="+moved.String()))
	})
	if got := l.proxy.Client().Stats().PublicAddr.String(); got != moved.String() {
		t.Fatalf("public address %s", got)
	}
	tr := &http.Transport{Proxy: http.ProxyURL(l.proxyURL), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(target.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after the address change: %d", resp.StatusCode)
	}
}
