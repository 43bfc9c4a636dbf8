package localproxy

import (
	"net/netip"
	"testing"
)

func TestIsLocalAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", true},
		{"::ffff:127.0.0.1", true}, // as quic-go may report it
		{"203.0.113.9", false},     // a NAT's public address, never on our interfaces
		{"2001:db8::9", false},
	} {
		if got := isLocalAddr(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("isLocalAddr(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}
