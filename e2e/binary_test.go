package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// The version and commit the test binaries are stamped with, as make
// build stamps its own (-ldflags -X).
const (
	testVersion = "v0.0.0-e2e"
	testCommit  = "e2e0000000000000000000000000000000000000"
)

// binaries builds the commands once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "quictunnel-bin-")
		if buildErr != nil {
			return
		}
		stamp := "-X quictunnel/internal/service.version=" + testVersion + " -X quictunnel/internal/service.commit=" + testCommit
		out, err := exec.Command("go", "build", "-ldflags", stamp, "-o", binDir+"/", "../cmd/...").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// process is a command running for the test; its output is kept.
type process struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan error
	killed bool
}

// kill ends the process with SIGKILL, as a crash or power loss would.
func (p *process) kill() {
	p.killed = true
	p.cmd.Process.Signal(syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs a binary (one of ours, or another by its absolute path)
// until the test ends (SIGINT, then kill).
func start(t *testing.T, env []string, name string, args ...string) *process {
	t.Helper()
	path := name
	if !filepath.IsAbs(name) {
		path = filepath.Join(binaries(t), name)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &process{cmd: cmd, out: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := p.done
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if p.killed {
			return
		}
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s exited with %v after SIGINT:\n%s", name, err, p.out)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop on SIGINT", name)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out)
		}
	})
	return p
}

// freeTCPPort is freeUDPPort for TCP.
func freeTCPPort(t *testing.T) int {
	return freePort(t, func(addr string) (io.Closer, error) { return net.Listen("tcp", addr) })
}

// TestBinaries runs the real commands as a user would: the reporter from
// flags, coordinator from environment variables, localproxy from a YAML
// config file, and sends requests through them.
func TestBinaries(t *testing.T) {
	stunPort, quicPort := freeUDPPort(t), freeUDPPort(t)
	proxyPort, appPort := freeTCPPort(t), freeTCPPort(t)
	certs, _ := filepath.Abs(certsDir())
	start(t, nil, "reporter", "--listen", "127.0.0.1:"+strconv.Itoa(stunPort))
	start(t, nil, "demoapp", "--listen", "127.0.0.1:"+strconv.Itoa(appPort))
	start(t, []string{
		"COORDINATOR_LISTEN=127.0.0.1:" + strconv.Itoa(quicPort),
		"COORDINATOR_CERT=" + filepath.Join(certs, "coordinator.pem"),
		"COORDINATOR_KEY=" + filepath.Join(certs, "coordinator-key.pem"),
		"COORDINATOR_TOKEN=bin-token",
		"COORDINATOR_ALLOW_PRIVATE_TARGETS=true", // the demo app is on loopback
		"COORDINATOR_LOG_FORMAT=json",
	}, "coordinator")
	config := filepath.Join(t.TempDir(), "localproxy.yaml")
	os.WriteFile(config, fmt.Appendf(nil, "listen: 127.0.0.1:%d\ncoordinator: 127.0.0.1:%d\nreporter: 127.0.0.1:%d\n"+
		"token: bin-token\nca: %s\nserver-name: localhost\n", proxyPort, quicPort, stunPort, filepath.Join(certs, "ca.pem")), 0o600)
	lp := start(t, nil, "localproxy", "--config", config)

	proxyURL, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", proxyPort))
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var body []byte
	waitFor(t, "a request through the binaries", func() bool {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/via-binaries", appPort))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(resp.Body)
		return resp.StatusCode == 200
	})
	if !strings.Contains(string(body), `"path": "/via-binaries"`) {
		t.Fatalf("demo app answered %s", body)
	}
	waitFor(t, "the public address and the NAT in localproxy's log", func() bool {
		return strings.Contains(lp.out.String(), "public address learnt from reporter") && strings.Contains(lp.out.String(), "NAT behaviour")
	})

	// localproxy status, with the listen address from the same config
	// file, while a slow download is open.
	slow, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/bytes?n=%d", appPort, 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	if _, err := io.ReadFull(slow.Body, make([]byte, 1<<10)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(binaries(t), "localproxy"), "--config", config, "status").CombinedOutput()
	if err != nil {
		t.Fatalf("localproxy status: %v\n%s", err, out)
	}
	for _, want := range []string{"— connected", "public address  127.0.0.1:", "NAT mapping     endpoint-independent",
		"open sessions: 1", fmt.Sprintf("127.0.0.1:%d  age", appPort)} {
		if !strings.Contains(string(out), want) {
			t.Errorf("localproxy status lacks %q:\n%s", want, out)
		}
	}
	// The same with --config after the command's name, and the help for
	// the command.
	out, err = exec.Command(filepath.Join(binaries(t), "localproxy"), "status", "--config", config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "— connected") {
		t.Errorf("localproxy status --config: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(binaries(t), "localproxy"), "help", "status").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "localproxy status") || !strings.Contains(string(out), "--config") {
		t.Errorf("localproxy help status: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(binaries(t), "localproxy"), "status", "--listen", "127.0.0.1:1").CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "is it running?") {
		t.Errorf("localproxy status with nothing listening: exit %d, want 1:\n%s", code, out)
	}
}

// TestHelpListsEveryFlag checks --help explains each flag with its
// default and environment variable.
func TestHelpListsEveryFlag(t *testing.T) {
	bin := binaries(t) // built before the timeout starts
	for name, want := range map[string][]string{
		"reporter":    {"--listen", "NAT_KEEP_ALIVE_INTERVAL", "--config", "--log-format", "--log-level"},
		"coordinator": {"--listen", "--cert", "--key", "--token", "--reporter-listen", "COORDINATOR_TOKEN", "(default: \":4433\")", "--qlog-dir", "--dns-cache-ttl"},
		"localproxy":  {"--listen", "--coordinator", "--reporter", "--token", "--ca", "--insecure", "LOCALPROXY_TOKEN", "(default: \"127.0.0.1:8118\")", "--qlog-dir"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		out, err := exec.CommandContext(ctx, filepath.Join(bin, name), "--help").CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s --help: %v\n%s", name, err, out)
		}
		for _, w := range want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%s --help lacks %q:\n%s", name, w, out)
			}
		}
	}
}

// TestBinaryErrors checks that common mistakes end with a message that
// says what to do and a non-zero exit.
func TestBinaryErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"localproxy", []string{"--token", "x"}, "coordinator"},
		{"localproxy", []string{"--token", "x", "--coordinator", "127.0.0.1:1", "--listen", "0.0.0.0:0"}, "--insecure-no-proxy-auth"},
		{"localproxy", []string{"--token", "x", "--coordinator", "127.0.0.1:1", "--proxy-auth", "nocolon"}, "USER:PASSWORD"},
		{"localproxy", []string{"--token", "x", "--coordinator", "127.0.0.1:1", "--transport", "udp"}, "--transport: \"udp\": want auto, quic or tcp"},
		{"localproxy", []string{"--token", "x", "--coordinator", "127.0.0.1:1", "--upstream-proxy", "socks5://h:1"}, "--upstream-proxy: scheme"},
		{"coordinator", []string{"--token", "x", "--cert", filepath.Join(certsDir(), "coordinator.pem"), "--key", filepath.Join(certsDir(), "coordinator-key.pem"),
			"--listen", "127.0.0.1:0", "--tcp-listen", "256.0.0.1:0"}, "tcp transport"},
		{"coordinator", []string{"--token", "x", "--cert", "/nonexistent.pem", "--key", "/nonexistent.pem"}, "--cert"},
		{"coordinator", []string{"--token", "x", "--cert", filepath.Join(certsDir(), "coordinator.pem"), "--key", filepath.Join(certsDir(), "coordinator-key.pem"),
			"--listen", "127.0.0.1:0", "--trusted-proxies", "10.0.0.0/8,proxy.example"}, "--trusted-proxies: trusted proxy \"proxy.example\""},
		{"reporter", []string{"--log-level", "loud"}, "--log-level"},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		out, err := exec.CommandContext(ctx, filepath.Join(binaries(t), tt.name), tt.args...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), tt.want) {
			t.Errorf("%s %v: err %v, output %q; want failure mentioning %q", tt.name, tt.args, err, out, tt.want)
		}
	}
}
