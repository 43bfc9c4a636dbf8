package e2e

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"quictunnel/internal/localproxy"
	"quictunnel/quictun"
)

var perClientScale = flag.Int("client-memory", 0,
	"TestCoordinatorMemoryPerClient: connect this many clients (e.g. 1000), each exposing one app, to a coordinator binary and print its memory per client (docs/scaling.md)")

// TestCoordinatorMemoryPerClient measures what a connected client costs
// coordinator: -client-memory N clients (localproxy, in this process),
// each publishing one HTTP name, connect to the coordinator binary; its
// RSS and Go heap before and after, divided by N, are logged. A
// measurement, run by hand:
//
//	go test -run TestCoordinatorMemoryPerClient -v ./e2e/ -args -client-memory 1000
func TestCoordinatorMemoryPerClient(t *testing.T) {
	n := *perClientScale
	if n == 0 {
		t.Skip("a measurement: run with -args -client-memory N")
	}
	certs, err := filepath.Abs(certsDir())
	if err != nil {
		t.Fatal(err)
	}
	quicPort, metricsPort, reporterPort := freeUDPPort(t), freeTCPPort(t), freeUDPPort(t)
	coord := start(t, nil, "coordinator", "--listen", loop(quicPort), "--reporter-listen", loop(reporterPort), "--token", binToken,
		"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
		"--metrics-listen", loop(metricsPort), "--http", loop(freeTCPPort(t)), "--domain", "localhost",
		"--max-clients", fmt.Sprint(n+10), "--log-level", "warn", "--pprof")
	waitFor(t, "coordinator metrics", func() bool { _, err := metric(metricsPort, "quictunnel_clients_connected"); return err == nil })
	app := startTarget(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	_, pool := loadCoordinatorCert(t)
	time.Sleep(time.Second)
	rssBefore := rss(t, coord)
	heapBefore, _ := metric(metricsPort, "go_memstats_heap_inuse_bytes")
	goroutinesBefore, _ := metric(metricsPort, "go_goroutines")

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := range n {
		name := fmt.Sprintf("c%d", i)
		p, err := localproxy.New(localproxy.Config{
			Listen: "127.0.0.1:0", UDPListen: "127.0.0.1:0", Coordinator: loop(quicPort), Reporter: loop(reporterPort),
			Token: binToken, RootCAs: pool, ServerName: "localhost", Name: name, NoUI: true, Logger: quiet, AccessLog: quiet,
			Services: []quictun.ExposedService{{Kind: quictun.ServiceHTTP, Name: name, Local: app.Listener.Addr().String()}},
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { p.Run(ctx) })
	}
	waitFor(t, fmt.Sprintf("%d clients connected", n), func() bool {
		v, err := metric(metricsPort, "quictunnel_clients_connected")
		return err == nil && int(v) == n
	})
	time.Sleep(3 * time.Second) // registrations and first keepalives done
	rssAfter := rss(t, coord)
	heapAfter, _ := metric(metricsPort, "go_memstats_heap_inuse_bytes")
	goroutinesAfter, _ := metric(metricsPort, "go_goroutines")
	per := func(before, after float64) float64 { return (after - before) / float64(n) / 1024 }
	t.Logf("%d clients, one name each: coordinator RSS %.1f → %.1f MiB (%.1f KiB per client), Go heap in use %.1f → %.1f MiB (%.1f KiB per client), goroutines %.0f → %.0f (%.1f per client)",
		n, float64(rssBefore)/(1<<20), float64(rssAfter)/(1<<20), per(float64(rssBefore), float64(rssAfter)),
		heapBefore/(1<<20), heapAfter/(1<<20), per(heapBefore, heapAfter),
		goroutinesBefore, goroutinesAfter, (goroutinesAfter-goroutinesBefore)/float64(n))
	if resp, err := http.Get("http://" + loop(metricsPort) + "/debug/pprof/heap"); err == nil {
		profile := filepath.Join(os.TempDir(), "coordinator-clients-heap.pprof")
		f, err := os.Create(profile)
		if err == nil {
			io.Copy(f, resp.Body)
			f.Close()
			t.Logf("coordinator's heap profile: %s (go tool pprof -sample_index=inuse_space -top %s)", profile, profile)
		}
		resp.Body.Close()
	}
}
