package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"quictunnel/internal/coordinator"
	"quictunnel/internal/localproxy"
	"quictunnel/quictun"
)

// benchChunk is the size of one download in the bulk benchmarks; run with
// -benchtime=16x to move 1 GiB.
const benchChunk = 64 << 20

// BenchmarkDownload compares a bulk download made directly, through the
// forward proxy with absolute-form HTTP, and through CONNECT (TLS inside),
// in the same run. MB/s is the figure to compare.
func BenchmarkDownload(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	plain := &httptest.Server{Listener: ln, Config: &http.Server{Handler: bulkHandler()}}
	plain.Start()
	defer plain.Close()
	tlsSrv := httptest.NewTLSServer(bulkHandler())
	defer tlsSrv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(tlsSrv.Certificate())

	l := startLab(b, labOptions{})
	url := "/bytes?n=" + strconv.Itoa(benchChunk)
	cases := []struct {
		name   string
		client *http.Client
		base   string
	}{
		{"direct", &http.Client{Transport: &http.Transport{}}, plain.URL},
		{"direct-tls", &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}, tlsSrv.URL},
		{"proxy-absolute-form", &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(l.proxyURL)}}, plain.URL},
		{"proxy-connect-tls", &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(l.proxyURL), TLSClientConfig: &tls.Config{RootCAs: roots}}}, tlsSrv.URL},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(benchChunk)
			for b.Loop() {
				resp, err := c.client.Get(c.base + url)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || n != benchChunk {
					b.Fatalf("got %d bytes, %v", n, err)
				}
			}
			c.client.CloseIdleConnections()
		})
	}
}

// BenchmarkReverseDownload compares a bulk download from an exposed app
// made directly and through coordinator's public port, in the same run.
func BenchmarkReverseDownload(b *testing.B) {
	app := startBenchApp(b)
	l := startReverseBenchLab(b, app)
	url := "/bytes?n=" + strconv.Itoa(benchChunk)
	for _, c := range []struct{ name, addr, host string }{
		{"direct", app, ""},
		{"reverse-public-port", l.httpAddr, "app.localhost"},
	} {
		b.Run(c.name, func(b *testing.B) {
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			b.SetBytes(benchChunk)
			for b.Loop() {
				req, _ := http.NewRequest("GET", "http://"+c.addr+url, nil)
				if c.host != "" {
					req.Host = c.host
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || n != benchChunk {
					b.Fatalf("got %d bytes, %v", n, err)
				}
			}
		})
	}
}

// BenchmarkSmallRequests measures requests/s and latency percentiles with
// 64 concurrent keep-alive clients: directly to the app, through the
// forward proxy, and through the reverse tunnel's public port.
func BenchmarkSmallRequests(b *testing.B) {
	app := startBenchApp(b)
	rl := startReverseBenchLab(b, app)
	fl := startLab(b, labOptions{})
	const clients = 64
	for _, c := range []struct {
		name, url, host string
		proxy           bool
	}{
		{"direct", "http://" + app + "/healthz", "", false},
		{"forward-proxy", "http://" + app + "/healthz", "", true},
		{"reverse-public-port", "http://" + rl.httpAddr + "/healthz", "app.localhost", false},
	} {
		b.Run(c.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: clients}
			if c.proxy {
				tr.Proxy = http.ProxyURL(fl.proxyURL)
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			per := max(b.N/clients, 1)
			lat := make([]time.Duration, clients*per)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := range clients {
				wg.Go(func() {
					for i := range per {
						req, _ := http.NewRequest("GET", c.url, nil)
						if c.host != "" {
							req.Host = c.host
						}
						t0 := time.Now()
						resp, err := client.Do(req)
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						lat[w*per+i] = time.Since(t0)
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			slices.Sort(lat)
			b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func startBenchApp(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: bulkHandler()}}
	srv.Start()
	b.Cleanup(srv.Close)
	return ln.Addr().String()
}

// startReverseBenchLab is a coordinator with one client exposing app.
func startReverseBenchLab(b *testing.B, app string) *reverseLab {
	cert, pool := loadCoordinatorCert(b)
	c, err := coordinator.New(coordinator.Config{Listen: "127.0.0.1:0", Certificate: cert, Token: "bench-token",
		ReporterListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	p, err := localproxy.New(localproxy.Config{Listen: "127.0.0.1:0", UDPListen: "127.0.0.1:0", Coordinator: c.Addr().String(),
		Reporter: c.ReporterAddr().String(), Token: "bench-token", RootCAs: pool, ServerName: "localhost",
		Services: []quictun.ExposedService{{Kind: quictun.ServiceHTTP, Name: "app", Local: app}}})
	if err != nil {
		b.Fatal(err)
	}
	pdone := make(chan error, 1)
	go func() { pdone <- p.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-pdone; <-done })
	for deadline := time.Now().Add(10 * time.Second); len(p.Client().Registrations()) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("app never registered")
		}
	}
	return &reverseLab{coord: c, httpAddr: c.HTTPAddr().String(), quicAddr: c.Addr().String()}
}

// BenchmarkSessionSetup measures a new session from connect to the first
// response byte: a fresh CONNECT through the forward proxy (a new tunnel
// session each time) versus a direct TCP connect, each followed by one
// small HTTP request.
func BenchmarkSessionSetup(b *testing.B) {
	app := startBenchApp(b)
	l := startLab(b, labOptions{})
	request := "GET /healthz HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
	for _, c := range []struct {
		name  string
		proxy bool
	}{{"direct", false}, {"connect-new-session", true}} {
		b.Run(c.name, func(b *testing.B) {
			var lat []time.Duration
			buf := make([]byte, 512)
			for b.Loop() {
				t0 := time.Now()
				addr := app
				if c.proxy {
					addr = l.proxyURL.Host
				}
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				br := bufio.NewReader(conn)
				if c.proxy {
					fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", app, app)
					resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
					if err != nil || resp.StatusCode != 200 {
						b.Fatalf("CONNECT: %v %v", resp, err)
					}
				}
				io.WriteString(conn, request)
				if _, err := br.Read(buf[:1]); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
				io.Copy(io.Discard, br)
				conn.Close()
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}
