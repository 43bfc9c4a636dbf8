package e2e

import (
	"bytes"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pion/stun/v2"

	"quictunnel/natt"
)

// TestKeepaliveIntervalFromEnvironment runs the standalone reporter and
// coordinator's built-in one (--reporter-listen) with the keepalive
// interval set by flag or variable, asks for keepalive, and times the
// pings that arrive: 150 ms apart, not the 15 s default.
func TestKeepaliveIntervalFromEnvironment(t *testing.T) {
	certs, _ := filepath.Abs(certsDir())
	coordinator := func(port int, args ...string) []string {
		return append([]string{"--listen", "127.0.0.1:" + strconv.Itoa(freeUDPPort(t)),
			"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
			"--token", "ka-token", "--reporter-listen", "127.0.0.1:" + strconv.Itoa(port)}, args...)
	}
	reporter := func(port int, args ...string) []string {
		return append([]string{"--listen", "127.0.0.1:" + strconv.Itoa(port)}, args...)
	}
	tests := []struct {
		name string
		bin  string
		env  []string
		args func(port int, args ...string) []string
		flag []string
	}{
		{"reporter NAT_KEEP_ALIVE_INTERVAL", "reporter", []string{"NAT_KEEP_ALIVE_INTERVAL=150"}, reporter, nil},
		{"reporter REPORTER_KEEPALIVE_INTERVAL beats NAT_KEEP_ALIVE_INTERVAL", "reporter",
			[]string{"REPORTER_KEEPALIVE_INTERVAL=150", "NAT_KEEP_ALIVE_INTERVAL=60000"}, reporter, nil},
		{"coordinator NAT_KEEP_ALIVE_INTERVAL", "coordinator", []string{"NAT_KEEP_ALIVE_INTERVAL=150"}, coordinator, nil},
		{"coordinator COORDINATOR_REPORTER_KEEPALIVE_INTERVAL", "coordinator",
			[]string{"COORDINATOR_REPORTER_KEEPALIVE_INTERVAL=150", "NAT_KEEP_ALIVE_INTERVAL=60000"}, coordinator, nil},
		{"coordinator --reporter-keepalive-interval", "coordinator", []string{"NAT_KEEP_ALIVE_INTERVAL=60000"}, coordinator,
			[]string{"--reporter-keepalive-interval", "150"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := freeUDPPort(t)
			start(t, tt.env, tt.bin, tt.args(port, tt.flag...)...)
			gaps := pingGaps(t, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}, 4)
			// 150 ms on average: the pings keep their schedule, so one sent
			// late on a busy machine is followed by a short gap (seen: 30 ms
			// after 120 ms late). The lower bound proves it is not a faster
			// interval, the upper one that it is not the 15 s default.
			var sum time.Duration
			for _, g := range gaps {
				sum += g
			}
			if mean := sum / time.Duration(len(gaps)); mean < 100*time.Millisecond || mean > 600*time.Millisecond {
				t.Fatalf("pings %v apart (mean %v), want about 150ms", gaps, mean)
			}
			t.Logf("pings %v apart", gaps)
		})
	}
}

// pingGaps asks the reporter at addr for keepalive (retrying until it
// answers: it may still be starting), answers its pings, and returns the
// time between the first n+1 of them. It fails after 5 s.
func pingGaps(t *testing.T, addr *net.UDPAddr, n int) []time.Duration {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.RawAttribute{Type: natt.AttrKeepaliveRequest}, stun.Fingerprint)
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 1500)
	var pings []time.Time
	for answered := false; len(pings) <= n; {
		if time.Now().After(deadline) {
			t.Fatalf("answered %v, %d pings within 5s", answered, len(pings))
		}
		if !answered {
			conn.WriteTo(req.Raw, addr)
		}
		conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		k, _, err := conn.ReadFrom(buf)
		if err != nil {
			continue
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:k]...)}
		if m.Decode() != nil {
			continue
		}
		switch {
		case m.Type == stun.BindingSuccess && bytes.Equal(m.TransactionID[:], req.TransactionID[:]):
			answered = true
		case m.Type == stun.BindingRequest && answered:
			pings = append(pings, time.Now())
			resp := stun.MustBuild(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess, stun.Fingerprint)
			conn.WriteTo(resp.Raw, addr)
		}
	}
	gaps := make([]time.Duration, 0, n)
	for i := 1; i < len(pings); i++ {
		gaps = append(gaps, pings[i].Sub(pings[i-1]))
	}
	return gaps
}
