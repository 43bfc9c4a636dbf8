package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
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
