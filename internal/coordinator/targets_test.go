package coordinator

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"quictunnel/quictun"
)

func TestTargetPolicyAddresses(t *testing.T) {
	own := []netip.Addr{netip.MustParseAddr("198.51.100.7")}
	tests := []struct {
		name   string
		policy TargetPolicy
		addr   string
		want   string // substring of the reason; "" allowed
	}{
		{"public v4", TargetPolicy{}, "203.0.113.9", ""},
		{"public v6", TargetPolicy{}, "2001:db8::1", ""},
		{"benchmark range is public", TargetPolicy{}, "198.18.0.5", ""},
		{"documentation 198.51.100/24 is public", TargetPolicy{}, "198.51.100.1", ""},
		{"loopback", TargetPolicy{}, "127.0.0.1", "loopback"},
		{"loopback other", TargetPolicy{}, "127.8.9.1", "loopback"},
		{"loopback v6", TargetPolicy{}, "::1", "loopback"},
		{"v4-mapped loopback", TargetPolicy{}, "::ffff:127.0.0.1", "loopback"},
		{"rfc1918 10", TargetPolicy{}, "10.1.2.3", "private"},
		{"rfc1918 172", TargetPolicy{}, "172.31.255.255", "private"},
		{"172.32 is public", TargetPolicy{}, "172.32.0.1", ""},
		{"rfc1918 192.168", TargetPolicy{}, "192.168.1.1", "private"},
		{"ula", TargetPolicy{}, "fd12::1", "private"},
		{"link-local", TargetPolicy{}, "169.254.169.254", "link-local"},
		{"link-local v6", TargetPolicy{}, "fe80::1", "link-local"},
		{"cgnat", TargetPolicy{}, "100.64.0.1", "carrier-grade NAT"},
		{"unspecified", TargetPolicy{}, "0.0.0.0", "unspecified"},
		{"unspecified v6", TargetPolicy{}, "::", "unspecified"},
		{"multicast", TargetPolicy{}, "224.0.0.1", "multicast"},
		{"multicast v6", TargetPolicy{}, "ff02::1", "multicast"},
		{"broadcast", TargetPolicy{}, "255.255.255.255", "reserved"},
		{"nat64 of private", TargetPolicy{}, "64:ff9b::a00:1", "private (NAT64)"},
		{"nat64 of public", TargetPolicy{}, "64:ff9b::cb00:7109", ""},
		{"6to4 of loopback", TargetPolicy{}, "2002:7f00:1::1", "loopback (6to4)"},
		{"v4-compatible loopback", TargetPolicy{}, "::127.0.0.1", "IPv4-compatible"},
		{"v4-compatible public", TargetPolicy{}, "::203.0.113.9", "IPv4-compatible"},
		{"v4-mapped private", TargetPolicy{}, "::ffff:10.0.0.1", "private"},
		{"v4-mapped public", TargetPolicy{}, "::ffff:203.0.113.9", ""},
		{"v4-translated loopback", TargetPolicy{}, "::ffff:0:127.0.0.1", "loopback (SIIT)"},
		{"v4-translated public", TargetPolicy{}, "::ffff:0:203.0.113.9", "reserved"},
		{"reserved ::/8", TargetPolicy{}, "::1:0:0:1", "reserved"},
		{"discard-only", TargetPolicy{}, "100::1", "reserved"},
		{"nat64 of loopback", TargetPolicy{}, "64:ff9b::127.0.0.1", "loopback (NAT64)"},
		{"nat64 of metadata", TargetPolicy{}, "64:ff9b::169.254.169.254", "link-local (NAT64)"},
		{"6to4 of private", TargetPolicy{}, "2002:c0a8:101::1", "private (6to4)"},
		{"6to4 of public", TargetPolicy{}, "2002:cb00:7109::1", ""},
		{"teredo to a loopback client", TargetPolicy{}, "2001:0:cb00:7109:0:0:80ff:fffe", "loopback (Teredo)"},
		{"teredo via a private server", TargetPolicy{}, "2001:0:a00:1:0:0:3400:8e76", "private (Teredo)"},
		{"teredo public", TargetPolicy{}, "2001:0:cb00:7109:0:0:3400:8e76", ""},
		{"own address", TargetPolicy{}, "198.51.100.7", "own address"},
		{"own address mapped", TargetPolicy{}, "::ffff:198.51.100.7", "own address"},
		{"own address in 6to4", TargetPolicy{}, "2002:c633:6407::1", "carries coordinator's own address (6to4"},
		{"own address in nat64", TargetPolicy{}, "64:ff9b::198.51.100.7", "carries coordinator's own address (NAT64"},
		{"allow private opens v4-compatible", TargetPolicy{AllowPrivate: true}, "::127.0.0.1", ""},
		{"allow private opens loopback", TargetPolicy{AllowPrivate: true}, "127.0.0.1", ""},
		{"allow private opens own", TargetPolicy{AllowPrivate: true}, "198.51.100.7", ""},
		{"allow-list CIDR", TargetPolicy{Allow: []string{"10.1.0.0/16"}}, "10.1.2.3", ""},
		{"allow-list CIDR other", TargetPolicy{Allow: []string{"10.1.0.0/16"}}, "10.2.0.1", "private"},
		{"allow-list IP", TargetPolicy{Allow: []string{"::1"}}, "::1", ""},
		{"allow-list own", TargetPolicy{Allow: []string{"198.51.100.7"}}, "198.51.100.7", ""},
		{"only allowed refuses public", TargetPolicy{OnlyAllowed: true, Allow: []string{"10.0.0.0/8"}}, "203.0.113.9", "not on the allow-list"},
		{"only allowed allows listed", TargetPolicy{OnlyAllowed: true, Allow: []string{"10.0.0.0/8"}}, "10.9.9.9", ""},
		{"only allowed beats allow private", TargetPolicy{OnlyAllowed: true, AllowPrivate: true}, "127.0.0.1", "not on the allow-list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.policy.compile(own)
			if err != nil {
				t.Fatal(err)
			}
			got := p.checkAddr(netip.MustParseAddr(tt.addr))
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
				t.Errorf("checkAddr(%s) = %q, want %q", tt.addr, got, tt.want)
			}
		})
	}
}

func TestTargetPolicyInvalid(t *testing.T) {
	tests := []struct {
		name   string
		policy TargetPolicy
		field  string
	}{
		{"bad allow entry", TargetPolicy{Allow: []string{"not a name!"}}, "TargetPolicy.Allow"},
		{"bad CIDR-looking", TargetPolicy{Allow: []string{"10.0.0.0/33"}}, "TargetPolicy.Allow"},
		{"empty wildcard", TargetPolicy{Allow: []string{"*."}}, "TargetPolicy.Allow"},
		{"port zero", TargetPolicy{DenyPorts: []int{0}}, "TargetPolicy.DenyPorts"},
		{"port too big", TargetPolicy{DenyPorts: []int{65536}}, "TargetPolicy.DenyPorts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.policy.compile(nil)
			ce, ok := errors.AsType[*ConfigError](err)
			if !ok || ce.Field != tt.field {
				t.Fatalf("compile = %v, want ConfigError for %s", err, tt.field)
			}
		})
	}
}

// failResolver fails the test if a DNS lookup is attempted.
func failResolver(t *testing.T) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		t.Errorf("DNS lookup attempted (%s %s)", network, address)
		return nil, errors.New("no DNS in this test")
	}}
}

// TestTargetPolicyDial dials through the policy: names are checked by the
// address they resolve to ("localhost" resolves from /etc/hosts), refused
// names are not looked up, and denied ports are refused first.
func TestTargetPolicyDial(t *testing.T) {
	ln := listenOn(t, "127.0.0.1:0")
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	tests := []struct {
		name      string
		policy    TargetPolicy
		target    string
		forbidden string // substring of the refusal; "" connects
	}{
		{"loopback IP refused", TargetPolicy{}, "127.0.0.1:" + port, "loopback"},
		{"v4-mapped loopback refused", TargetPolicy{}, "[::ffff:127.0.0.1]:" + port, "loopback"},
		{"v4-compatible loopback refused", TargetPolicy{}, "[::127.0.0.1]:" + port, "IPv4-compatible"},
		{"v4-translated loopback refused", TargetPolicy{}, "[::ffff:0:127.0.0.1]:" + port, "loopback (SIIT)"},
		{"name resolving to loopback refused", TargetPolicy{}, "localhost:" + port, "loopback"},
		{"allow private", TargetPolicy{AllowPrivate: true}, "127.0.0.1:" + port, ""},
		{"allowed name", TargetPolicy{Allow: []string{"LOCALHOST."}}, "localhost:" + port, ""},
		{"allowed suffix", TargetPolicy{Allow: []string{"*.test"}, OnlyAllowed: true}, "nowhere.test:" + port, "no DNS"},
		{"allowed IP under only-allowed", TargetPolicy{Allow: []string{"127.0.0.1"}, OnlyAllowed: true}, "127.0.0.1:" + port, ""},
		{"name not looked up under only-allowed", TargetPolicy{Allow: []string{"127.0.0.1"}, OnlyAllowed: true}, "www.example.com:443", "not on the allow-list"},
		{"denied port", TargetPolicy{AllowPrivate: true, DenyPorts: []int{25, mustAtoi(port)}}, "127.0.0.1:" + port, "denied"},
		{"denied port before DNS", TargetPolicy{DenyPorts: []int{25}}, "mail.example.com:25", "denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.policy.compile(nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.forbidden == "no DNS" {
				// An allowed name is resolved: the lookup is the test.
				var called atomic.Bool // A and AAAA lookups run at once
				p.hosts.resolver = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
					called.Store(true)
					return nil, errors.New("no DNS in this test")
				}}
				_, err := p.dialer()(t.Context(), "tcp", tt.target)
				if err == nil || errors.Is(err, quictun.ErrTargetForbidden) || !called.Load() {
					t.Fatalf("allowed name: err %v, looked up %v; want a lookup failure", err, called.Load())
				}
				return
			}
			p.hosts.resolver = failResolver(t)
			conn, err := p.dialer()(t.Context(), "tcp", tt.target)
			if tt.forbidden == "" {
				if err != nil {
					t.Fatalf("dial %s: %v", tt.target, err)
				}
				conn.Close()
				return
			}
			if err == nil {
				conn.Close()
				t.Fatalf("dial %s connected, want refusal", tt.target)
			}
			if !errors.Is(err, quictun.ErrTargetForbidden) || !strings.Contains(err.Error(), tt.forbidden) {
				t.Fatalf("dial %s: %v, want ErrTargetForbidden mentioning %q", tt.target, err, tt.forbidden)
			}
			if strings.HasPrefix(err.Error(), "dial ") {
				t.Errorf("reason carries the dialer's prefix: %v", err)
			}
		})
	}
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}
