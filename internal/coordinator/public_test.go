package coordinator

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/httpproxy"
	"quictunnel/quictun"
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

// TestReverseDialErrorHidesClient: the 502 a public visitor gets when the
// client exposing an app stopped answering says the app is offline but not
// which client it was (quictun's error names it: by default the client's
// host name).
func TestReverseDialErrorHidesClient(t *testing.T) {
	offline := fmt.Errorf("%w: %s sent nothing within %s", quictun.ErrClientOffline, "ceo-laptop", 1500*time.Millisecond)
	for _, tc := range []struct {
		name   string
		err    error
		status int
		want   string
	}{
		{"offline", offline, http.StatusBadGateway, `the client exposing "app" is offline`},
		{"deadline", context.DeadlineExceeded, http.StatusGatewayTimeout, "deadline"},
		{"shutting down", &quic.ApplicationError{Remote: true, ErrorCode: quic.ApplicationErrorCode(quictun.CodeShutdown), ErrorMessage: "localproxy shutting down"},
			http.StatusBadGateway, `the client exposing "app" is going offline`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var de *httpproxy.DialError
			if !errors.As(reverseDialError("app", tc.err), &de) {
				t.Fatalf("reverseDialError(%v) is not a DialError", tc.err)
			}
			if de.Status != tc.status || !strings.Contains(de.Reason, tc.want) || strings.Contains(de.Reason, "ceo-laptop") {
				t.Errorf("reverseDialError(%v) = %d %q, want %d with %q and no client name", tc.err, de.Status, de.Reason, tc.status, tc.want)
			}
			if !errors.Is(de, tc.err) {
				t.Errorf("DialError does not wrap %v", tc.err)
			}
		})
	}
}
