package localproxy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"quictunnel/httpproxy"
)

// TestProxyExposure checks that a proxy listening beyond loopback needs
// proxy credentials unless forced open. Nothing is sent anywhere: New only
// binds its sockets.
func TestProxyExposure(t *testing.T) {
	tests := []struct {
		name    string
		listen  string
		auth    *httpproxy.Credentials
		force   bool
		wantErr bool
	}{
		{name: "loopback needs nothing", listen: "127.0.0.1:0"},
		{name: "loopback v6 needs nothing", listen: "[::1]:0"},
		{name: "all addresses without credentials", listen: "0.0.0.0:0", wantErr: true},
		{name: "all addresses v6 without credentials", listen: "[::]:0", wantErr: true},
		{name: "all addresses with credentials", listen: "0.0.0.0:0", auth: &httpproxy.Credentials{User: "u", Password: "p"}},
		{name: "all addresses forced open", listen: "0.0.0.0:0", force: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(Config{Listen: tt.listen, UDPListen: "127.0.0.1:0", Coordinator: "127.0.0.1:1", Token: "t",
				ProxyAuth: tt.auth, InsecureNoProxyAuth: tt.force})
			if tt.wantErr {
				ce, ok := errors.AsType[*ConfigError](err)
				if !ok || ce.Field != "Listen" || !strings.Contains(err.Error(), "--proxy-auth") || !strings.Contains(err.Error(), "--insecure-no-proxy-auth") {
					t.Fatalf("New = %v, want a Listen error naming --proxy-auth and --insecure-no-proxy-auth", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			cancel() // Run then only closes the sockets
			if err := p.Run(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}
