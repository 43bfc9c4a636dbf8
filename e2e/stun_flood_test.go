package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v2"

	"quictunnel/natt"
)

// TestReporterKeepaliveFloodLog asks the standalone reporter and
// coordinator's built-in one for keepalive from 1,000 sources (addresses
// in 127.0.0.0/8, as spoofed ones would be): each is kept alive, and the
// log (at the default level) gets no line per source.
func TestReporterKeepaliveFloodLog(t *testing.T) {
	const sources = 1000
	certs, _ := filepath.Abs(certsDir())
	for _, bin := range []string{"reporter", "coordinator"} {
		t.Run(bin, func(t *testing.T) {
			stunPort, metricsPort := freeUDPPort(t), freeTCPPort(t)
			stunAddr := "127.0.0.1:" + strconv.Itoa(stunPort)
			args := []string{"--listen", stunAddr, "--keepalive-interval", "60000"}
			if bin == "coordinator" {
				args = []string{"--listen", "127.0.0.1:" + strconv.Itoa(freeUDPPort(t)), "--reporter-listen", stunAddr,
					"--reporter-keepalive-interval", "60000", "--token", "flood-token",
					"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem")}
			}
			p := start(t, nil, bin, append(args, "--metrics-listen", "127.0.0.1:"+strconv.Itoa(metricsPort))...)
			metric := func(name string) string {
				resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
				if err != nil {
					return ""
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				for line := range strings.Lines(string(b)) {
					if v, ok := strings.CutPrefix(line, name+" "); ok {
						return strings.TrimSpace(v)
					}
				}
				return ""
			}
			waitFor(t, "metrics", func() bool { return metric("quictunnel_stun_requests_total") != "" })
			server, err := net.ResolveUDPAddr("udp", stunAddr)
			if err != nil {
				t.Fatal(err)
			}
			req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.RawAttribute{Type: natt.AttrKeepaliveRequest}).Raw
			answered := 0
			buf := make([]byte, 1500)
			for i := range sources {
				// 127.1.x.y: every source its own address, so no per-source
				// rate limit applies; one request and its answer at a time.
				pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 1, byte(i>>8), byte(i))})
				if err != nil {
					t.Fatal(err)
				}
				pc.WriteTo(req, server)
				pc.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, _, err := pc.ReadFrom(buf); err == nil {
					answered++
				}
				pc.Close()
			}
			if answered != sources {
				t.Errorf("%d of %d keepalive requests answered", answered, sources)
			}
			if v := metric("quictunnel_stun_kept_alive_clients"); v != strconv.Itoa(answered) {
				t.Errorf("stun_kept_alive_clients %s, want %d", v, answered)
			}
			if n := strings.Count(p.out.String(), "\n"); n > 5 {
				t.Errorf("%d keepalive requests from as many sources logged %d lines at the default level, want a handful", sources, n)
			}
		})
	}
}
