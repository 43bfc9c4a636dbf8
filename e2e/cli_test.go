package e2e

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// exitCode is the exit status of a finished command (0 for a nil error,
// -1 when it did not run or was killed).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := errors.AsType[*exec.ExitError](err); ok {
		return ee.ExitCode()
	}
	return -1
}

// runBinary runs a binary to its end (10 s at most) and returns its
// combined output and exit status.
func runBinary(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	bin := filepath.Join(binaries(t), name) // the first call builds them: before the 10 s start
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), exitCode(err)
}

// TestVersionFlag checks every binary prints its version and commit.
func TestVersionFlag(t *testing.T) {
	for _, name := range []string{"coordinator", "localproxy", "reporter", "demoapp"} {
		out, code := runBinary(t, name, "--version")
		if code != 0 || !strings.HasPrefix(out, name+" version "+testVersion+" commit "+testCommit+" go") {
			t.Errorf("%s --version: exit %d, output %q; want %q, commit %s and the Go version", name, code, out, testVersion, testCommit)
		}
	}
}

// goField matches a Go Config field name in a message.
var goField = regexp.MustCompile(`\b(Token|Coordinator|Listen|MaxMisses|KeepAliveInterval|TargetPolicy\.\w+|config [A-Z]\w*):`)

// TestExitCodes checks a usage or settings error exits 2 with one line
// naming the flag, and a failure while running exits 1.
func TestExitCodes(t *testing.T) {
	certs, _ := filepath.Abs(certsDir())
	cert, key := filepath.Join(certs, "coordinator.pem"), filepath.Join(certs, "coordinator-key.pem")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyUDP, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busyUDP.Close()
	coord := []string{"--cert", cert, "--key", key, "--token", "x", "--listen", "127.0.0.1:0"}
	proxy := []string{"--coordinator", "127.0.0.1:1", "--token", "x"}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"localproxy", []string{"--coordinator", "127.0.0.1:1"}, 2, "localproxy: --token: required"},
		{"localproxy", []string{"--coordinator", "no-port", "--token", "x"}, 2, "localproxy: --coordinator: want host:port"},
		{"localproxy", []string{"--coordinator", "127.0.0.1:1", "--token", "x", "--dial-back-timeout", "soon"}, 2, "dial-back-timeout"},
		{"localproxy", []string{"--coordinator", "127.0.0.1:1", "--token", "x", "--keepalive-interval", "0"}, 2, "--keepalive-interval \"0\""},
		{"localproxy", []string{"--coordinator", "127.0.0.1:1", "--token", "x", "--expose", "app"}, 2, "--expose"},
		{"localproxy", []string{"--no-such-flag"}, 2, "no-such-flag"},
		{"localproxy", []string{"status", "--config", "/nonexistent.yaml"}, 2, "--config \"/nonexistent.yaml\": no such file"},
		{"reporter", []string{"--keepalive-misses", "-1"}, 2, "reporter: --keepalive-misses: must not be negative"},
		{"reporter", []string{"--keepalive-interval", "0"}, 2, "--keepalive-interval"},
		{"coordinator", []string{"--cert", cert, "--key", key, "--token", "x", "--role", "both"}, 2, "--role \"both\""},
		{"coordinator", []string{"--cert", cert, "--key", key}, 2, "coordinator: --token: required"},
		{"coordinator", []string{"--cert", cert, "--key", key, "--token", "x", "--deny-port", "70000"}, 2, "coordinator: --deny-port: 70000 is not a port"},
		{"demoapp", []string{"--listen"}, 2, "listen"},
		// A malformed address names its flag (exit 2).
		{"reporter", []string{"--listen", "bogus"}, 2, `reporter: --listen "bogus": want HOST:PORT`},
		{"reporter", []string{"--probe-listen", "bogus"}, 2, `--probe-listen "bogus"`},
		{"reporter", []string{"--metrics-listen", "127.0.0.1:99999"}, 2, `--metrics-listen "127.0.0.1:99999": "99999" is not a port`},
		{"coordinator", []string{"--cert", cert, "--key", key, "--token", "x", "--listen", "bogus"}, 2, `coordinator: --listen "bogus"`},
		{"coordinator", append(coord, "--tcp-listen", "bogus"), 2, `--tcp-listen "bogus"`},
		{"coordinator", append(coord, "--reporter-listen", "bogus"), 2, `--reporter-listen "bogus"`},
		{"coordinator", append(coord, "--http", "bogus"), 2, `--http "bogus"`},
		{"coordinator", append(coord, "--https", "no host:443"), 2, `--https "no host:443": "no host" is not`},
		{"coordinator", append(coord, "--metrics-listen", "bogus"), 2, `--metrics-listen "bogus"`},
		{"coordinator", append(coord, "--public-bind", "127.0.0.1:80"), 2, `--public-bind "127.0.0.1:80"`},
		{"localproxy", append(proxy, "--listen", "bogus"), 2, `localproxy: --listen "bogus"`},
		{"localproxy", append(proxy, "--udp-listen", "bogus"), 2, `--udp-listen "bogus"`},
		{"localproxy", append(proxy, "--ui-listen", "bogus"), 2, `--ui-listen "bogus"`},
		{"localproxy", append(proxy, "--metrics-listen", "bogus"), 2, `--metrics-listen "bogus"`},
		{"localproxy", append(proxy, "--reporter", "bogus"), 2, `localproxy: --reporter: want host:port, got "bogus"`},
		{"localproxy", append(proxy, "--coordinator-tcp", "bogus"), 2, `localproxy: --coordinator-tcp: want host:port, got "bogus"`},
		{"localproxy", append(proxy, "--coordinator", "127.0.0.1:1,127.0.0.1:1"), 2, `localproxy: --coordinator: 127.0.0.1:1 is listed twice`},
		{"localproxy", append(proxy, "--coordinator", "127.0.0.1:1,127.0.0.1:2", "--coordinator-tcp", "127.0.0.1:3"), 2,
			`localproxy: --coordinator-tcp: 1 addresses for 2 coordinators`},
		{"demoapp", []string{"--listen", "bogus"}, 2, `demoapp: --listen "bogus"`},
		// Failures while running: the port is taken.
		{"localproxy", []string{"--coordinator", "127.0.0.1:1", "--token", "x", "--listen", busy.Addr().String()}, 1, "port in use"},
		{"demoapp", []string{"--listen", busy.Addr().String()}, 1, "port in use"},
		{"reporter", []string{"--listen", busyUDP.LocalAddr().String()}, 1, "port in use"},
		{"coordinator", []string{"--cert", cert, "--key", key, "--token", "x", "--listen", busyUDP.LocalAddr().String()}, 1, "port in use"},
		{"coordinator", append(coord, "--http", busy.Addr().String()), 1, "port in use"},
		{"localproxy", append(proxy, "--udp-listen", busyUDP.LocalAddr().String()), 1, "port in use"},
	}
	for _, tt := range tests {
		out, code := runBinary(t, tt.name, tt.args...)
		if code != tt.code || !strings.Contains(out, tt.want) {
			t.Errorf("%s %q: exit %d, output %q; want exit %d and %q", tt.name, tt.args, code, out, tt.code, tt.want)
		}
		if strings.Contains(out, tt.name+": "+tt.name+":") || goField.MatchString(out) {
			t.Errorf("%s %q: the message repeats the prefix or names a Go field: %q", tt.name, tt.args, out)
		}
		if n := strings.Count(strings.TrimSpace(out), "\n"); n > 0 {
			t.Errorf("%s %q: %d lines, want one: %q", tt.name, tt.args, n+1, out)
		}
	}
}
