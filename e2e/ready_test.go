package e2e

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestWrongToken checks a localproxy whose token coordinator refuses says
// so and exits 1, without ever logging "localproxy ready".
func TestWrongToken(t *testing.T) {
	quicPort, proxyPort := freeUDPPort(t), freeTCPPort(t)
	certs, _ := filepath.Abs(certsDir())
	coord := start(t, nil, "coordinator", "--listen", "127.0.0.1:"+strconv.Itoa(quicPort),
		"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"), "--token", "right")
	waitFor(t, "coordinator to start", func() bool { return strings.Contains(coord.out.String(), "coordinator ready") })
	args := []string{"--listen", "127.0.0.1:" + strconv.Itoa(proxyPort), "--coordinator", "127.0.0.1:" + strconv.Itoa(quicPort),
		"--reporter", "127.0.0.1:" + strconv.Itoa(quicPort), "--stun-timeout", "100ms",
		"--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost"}

	out, code := runBinary(t, "localproxy", append(args, "--token", "wrong")...)
	if code != 1 || !strings.Contains(out, "refused the token") || strings.Contains(out, "localproxy ready") {
		t.Errorf("localproxy with a wrong token: exit %d, want 1, a refusal and no \"localproxy ready\":\n%s", code, out)
	}

	// The right token: "ready" follows the connection to coordinator.
	lp := start(t, nil, "localproxy", append(args, "--token", "right")...)
	waitFor(t, "localproxy ready", func() bool { return strings.Contains(lp.out.String(), "localproxy ready") })
	if log := lp.out.String(); strings.Index(log, "connected to coordinator") > strings.Index(log, "localproxy ready") {
		t.Errorf("\"localproxy ready\" before \"connected to coordinator\":\n%s", log)
	}
}
