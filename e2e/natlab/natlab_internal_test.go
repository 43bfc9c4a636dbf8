package natlab

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    Options
		field string // "" = valid
		hosts int    // PublicHosts after validate
	}{
		{"zero", Options{}, "", 4},
		{"max hosts", Options{PublicHosts: MaxPublicHosts, NAT: Symmetric, IPv6: IPv6Firewall}, "", MaxPublicHosts},
		{"too many hosts", Options{PublicHosts: MaxPublicHosts + 1}, "PublicHosts", 0},
		{"negative hosts", Options{PublicHosts: -1}, "PublicHosts", 0},
		{"bad kind", Options{NAT: 7}, "NAT", 0},
		{"bad ipv6", Options{IPv6: -1}, "IPv6", 0},
		{"negative timeout", Options{UDPTimeout: -time.Second}, "UDPTimeout", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.in
			err := o.validate()
			var ce *ConfigError
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("validate: %v", err)
			case tc.field == "" && o.PublicHosts != tc.hosts:
				t.Fatalf("PublicHosts = %d, want %d", o.PublicHosts, tc.hosts)
			case tc.field != "" && (!errors.As(err, &ce) || ce.Field != tc.field):
				t.Fatalf("validate = %v, want a ConfigError for %s", err, tc.field)
			}
		})
	}
}

func TestPublicAddrs(t *testing.T) {
	lan := []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.0/24")}
	doc6 := netip.MustParsePrefix("2001:db8::/32")
	seen := map[netip.Addr]bool{natWAN4: true, natWAN6: true}
	for i := 1; i <= MaxPublicHosts; i++ {
		seg, a4, a6 := publicAddrs(i)
		if !slices.ContainsFunc(lan, func(p netip.Prefix) bool { return p.Contains(a4) }) || !doc6.Contains(a6) {
			t.Fatalf("pub%d: %s %s outside the lab's ranges", i, a4, a6)
		}
		if r4, r6 := seg.host(1); seen[a4] || seen[a6] || a4 == r4 || a6 == r6 {
			t.Fatalf("pub%d: %s %s collides", i, a4, a6)
		}
		seen[a4], seen[a6] = true, true
	}
	if _, a4, a6 := publicAddrs(1); a4.String() != "198.51.100.10" || a6.String() != "2001:db8:a::10" {
		t.Fatalf("pub1 = %s %s", a4, a6)
	}
}

func TestParseLiteral(t *testing.T) {
	for _, tc := range []struct {
		in   string
		ip   string // "" = wildcard
		port int
		ok   bool
	}{
		{"198.18.0.2:0", "198.18.0.2", 0, true},
		{"[2001:db8:1::2]:7000", "2001:db8:1::2", 7000, true},
		{":65535", "", 65535, true},
		{"localhost:80", "", 0, false},
		{"198.18.0.2", "", 0, false},
		{"198.18.0.2:65536", "", 0, false},
		{"[fe80::1%eth0]:1", "", 0, false},
	} {
		ip, port, err := parseLiteral(tc.in)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadAddress)) {
			t.Errorf("parseLiteral(%q) error %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && (port != tc.port || (tc.ip == "" && ip != nil) || (tc.ip != "" && !ip.Equal(net.ParseIP(tc.ip)))) {
			t.Errorf("parseLiteral(%q) = %v, %d", tc.in, ip, port)
		}
	}
}

// FuzzParseLiteral: what parses formats back to an address that parses to
// the same result.
func FuzzParseLiteral(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		ip, port, err := parseLiteral(s)
		if err != nil {
			return
		}
		host := ""
		if ip != nil {
			host = ip.String()
		}
		ip2, port2, err := parseLiteral(net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil || port2 != port || !ip2.Equal(ip) {
			t.Fatalf("%q -> %v %d -> %v %d %v", s, ip, port, ip2, port2, err)
		}
	})
}

func TestLinkNames(t *testing.T) {
	out := "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536\n" +
		"2: eth0@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n" +
		"4: seg-a: <BROADCAST> mtu 1500\n\n"
	if got := linkNames(out); !slices.Equal(got, []string{"eth0", "seg-a"}) {
		t.Fatalf("linkNames = %q", got)
	}
}

func TestStale(t *testing.T) {
	own := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		ns   string
		want bool
	}{
		{"qlab-" + own + "-1-client", false},
		{"qlab-1-1-client", false}, // pid 1 is alive
		{"qlab-x-1-client", false},
		{"other-123-1-client", false},
		{"qlab--1-client", false},
	} {
		if got := stale(tc.ns); got != tc.want {
			t.Errorf("stale(%q) = %v, want %v", tc.ns, got, tc.want)
		}
	}
}
