package coordinator

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// TestHTTPSCertificateCoverage: coordinator warns at start-up when the
// HTTPS certificate does not cover NAME.DOMAIN, and only then.
func TestHTTPSCertificateCoverage(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "certs")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "coordinator.pem"), filepath.Join(dir, "coordinator-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		domain string
		warn   bool
	}{
		{"localhost", false},          // the test certificate has *.localhost
		{"tunnel.example.test", true}, // and nothing under this domain
	} {
		t.Run(tc.domain, func(t *testing.T) {
			var log bytes.Buffer // New logs before it returns, on this goroutine
			c, err := New(Config{Listen: "127.0.0.1:0", Certificate: cert, Token: "t", HTTPSListen: "127.0.0.1:0",
				Domain: tc.domain, Logger: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				c.closePublic()
				c.tr.Close()
				c.udp.Close()
			}()
			if c.HTTPSAddr() == nil {
				t.Fatal("no HTTPS listener")
			}
			if got := strings.Contains(log.String(), "does not cover the exposed names"); got != tc.warn {
				t.Errorf("warned: %v, want %v; log:\n%s", got, tc.warn, log.String())
			}
			if want := "https://%s:"; !strings.HasPrefix(c.registry.httpURL, want) {
				t.Errorf("URL template %q, want %s...", c.registry.httpURL, want)
			}
		})
	}
}
