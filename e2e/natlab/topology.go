package natlab

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
)

// The lab's addresses. Only 198.18.0.0/24 (private), 198.51.100.0/24 and
// 203.0.113.0/24 (public) and 2001:db8::/32 are ever used.
var (
	lanPrefix4 = netip.MustParsePrefix("198.18.0.0/24")
	lanPrefix6 = netip.MustParsePrefix("2001:db8:1::/64")
	clientLAN4 = netip.MustParseAddr("198.18.0.2")
	clientLAN6 = netip.MustParseAddr("2001:db8:1::2")
	natLAN4    = netip.MustParseAddr("198.18.0.1")
	natLAN6    = netip.MustParseAddr("2001:db8:1::1")
	natWAN4    = netip.MustParseAddr("203.0.113.2")
	natWAN6    = netip.MustParseAddr("2001:db8:b::2")
)

// segment is a public L2 segment: a bridge in the internet namespace whose
// own addresses (host part 1) are the segment's router.
type segment struct {
	bridge     string
	fmt4, fmt6 string // address of host part %d
}

var (
	segA = segment{"seg-a", "198.51.100.%d", "2001:db8:a::%d"}
	segB = segment{"seg-b", "203.0.113.%d", "2001:db8:b::%d"}
)

// host returns the segment's addresses with host part n (decimal digits in
// IPv6 too, "2001:db8:a::10", so both families read alike).
func (s segment) host(n int) (netip.Addr, netip.Addr) {
	return netip.MustParseAddr(fmt.Sprintf(s.fmt4, n)), netip.MustParseAddr(fmt.Sprintf(s.fmt6, n))
}

// Both public segments are a /24 and a /64.
const segBits4, segBits6 = 24, 64

// publicAddrs returns public host i's segment and addresses: odd hosts on
// segment A, even on B, host part 10*i.
func publicAddrs(i int) (segment, netip.Addr, netip.Addr) {
	seg := segA
	if i%2 == 0 {
		seg = segB
	}
	a4, a6 := seg.host(10 * i)
	return seg, a4, a6
}

// build creates the namespaces, links, addresses, routes, sysctls and
// firewall rules. Whatever it created is recorded in l.created, so cleanup
// removes it even when build fails half-way.
func (l *Lab) build(ctx context.Context) error {
	v6 := l.opts.IPv6 != IPv6None
	l.client = &Host{Name: "client", IPv4: clientLAN4, lab: l}
	l.nat = &Host{Name: "nat", IPv4: natWAN4, lab: l}
	r4, r6 := segA.host(1)
	l.internet = &Host{Name: "internet", IPv4: r4, IPv6: r6, lab: l}
	if v6 {
		l.client.IPv6 = clientLAN6
		l.nat.IPv6 = natWAN6
	}
	hosts := []*Host{l.internet, l.nat, l.client}
	for i := 1; i <= l.opts.PublicHosts; i++ {
		_, a4, a6 := publicAddrs(i)
		h := &Host{Name: "pub" + strconv.Itoa(i), IPv4: a4, IPv6: a6, lab: l}
		l.public = append(l.public, h)
		hosts = append(hosts, h)
	}
	for i, h := range hosts {
		h.NS = l.prefix + h.Name
		if err := l.addNS(ctx, h.NS); err != nil {
			if i == 0 {
				return fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			return err
		}
	}
	if err := l.buildInternet(ctx); err != nil {
		return err
	}
	if err := l.buildNAT(ctx, v6); err != nil {
		return err
	}
	if err := l.buildClient(ctx, v6); err != nil {
		return err
	}
	for i, h := range l.public {
		if err := l.buildPublic(ctx, i+1, h); err != nil {
			return err
		}
	}
	return l.buildFirewall(ctx)
}

// addNS creates a namespace with lo up and without IPv6 DAD (addresses are
// usable at once, no tentative state to wait for).
func (l *Lab) addNS(ctx context.Context, ns string) error {
	if _, err := run(ctx, "", l.tools.ip, "netns", "add", ns); err != nil {
		return err
	}
	l.mu.Lock()
	l.created = append(l.created, ns)
	l.mu.Unlock()
	if err := setSysctls(ns,
		"net.ipv6.conf.all.accept_dad", "0",
		"net.ipv6.conf.default.accept_dad", "0",
		"net.ipv6.conf.default.accept_ra", "0",
	); err != nil {
		return err
	}
	return l.tools.ipn(ctx, ns, "link", "set", "lo", "up")
}

// veth creates a veth pair with one end in each namespace. The pair is
// created directly in the two namespaces (the kernel never registers it in
// the namespace of the ip command), so no end ever shows in the root
// namespace.
func (l *Lab) veth(ctx context.Context, ns1, name1, ns2, name2 string) error {
	return l.tools.ipn(ctx, ns1, "link", "add", name1, "type", "veth", "peer", "name", name2, "netns", ns2)
}

// addrs brings dev up and gives it addresses ("" entries are skipped).
func (l *Lab) addrs(ctx context.Context, ns, dev string, prefixes ...string) error {
	for _, p := range prefixes {
		if p == "" {
			continue
		}
		if err := l.tools.ipn(ctx, ns, "addr", "add", p, "dev", dev, "nodad"); err != nil {
			return err
		}
	}
	return l.tools.ipn(ctx, ns, "link", "set", dev, "up")
}

func pfx(a netip.Addr, bits int) string { return netip.PrefixFrom(a, bits).String() }

func (l *Lab) buildInternet(ctx context.Context) error {
	ns := l.internet.NS
	if err := setSysctls(ns, "net.ipv4.ip_forward", "1", "net.ipv6.conf.all.forwarding", "1"); err != nil {
		return err
	}
	// If br_netfilter is loaded, bridged frames would pass this namespace's
	// (empty) iptables and conntrack; the internet is a plain switch+router.
	if err := setOptionalSysctls(ns, "net.bridge.bridge-nf-call-iptables", "0",
		"net.bridge.bridge-nf-call-ip6tables", "0", "net.bridge.bridge-nf-call-arptables", "0"); err != nil {
		return err
	}
	for _, s := range []segment{segA, segB} {
		if err := l.tools.ipn(ctx, ns, "link", "add", s.bridge, "type", "bridge", "stp_state", "0", "mcast_snooping", "0"); err != nil {
			return err
		}
		r4, r6 := s.host(1)
		if err := l.addrs(ctx, ns, s.bridge, pfx(r4, segBits4), pfx(r6, segBits6)); err != nil {
			return err
		}
	}
	if l.opts.IPv6 == IPv6Firewall {
		// A routed home network: the LAN prefix is reachable via the NAT.
		if err := l.tools.ipn(ctx, ns, "-6", "route", "add", lanPrefix6.String(), "via", natWAN6.String()); err != nil {
			return err
		}
	}
	return nil
}

// attach links host namespace ns (interface dev) to segment s through a
// bridge port called port in the internet namespace.
func (l *Lab) attach(ctx context.Context, ns, dev string, s segment, port string) error {
	in := l.internet.NS
	if err := l.veth(ctx, in, port, ns, dev); err != nil {
		return err
	}
	if err := l.tools.ipn(ctx, in, "link", "set", port, "master", s.bridge); err != nil {
		return err
	}
	return l.tools.ipn(ctx, in, "link", "set", port, "up")
}

func (l *Lab) buildNAT(ctx context.Context, v6 bool) error {
	ns := l.nat.NS
	kv := []string{"net.ipv4.ip_forward", "1"}
	if v6 {
		kv = append(kv, "net.ipv6.conf.all.forwarding", "1")
	}
	if err := setSysctls(ns, kv...); err != nil {
		return err
	}
	if err := l.attach(ctx, ns, "wan", segB, "nat"); err != nil {
		return err
	}
	wan6, lan6 := "", ""
	if v6 {
		wan6, lan6 = pfx(natWAN6, segBits6), pfx(natLAN6, lanPrefix6.Bits())
	}
	if err := l.addrs(ctx, ns, "wan", pfx(natWAN4, segBits4), wan6); err != nil {
		return err
	}
	r4, r6 := segB.host(1)
	if err := l.tools.ipn(ctx, ns, "route", "add", "default", "via", r4.String()); err != nil {
		return err
	}
	if v6 {
		if err := l.tools.ipn(ctx, ns, "-6", "route", "add", "default", "via", r6.String()); err != nil {
			return err
		}
	}
	if err := l.veth(ctx, ns, "lan", l.client.NS, "eth0"); err != nil {
		return err
	}
	return l.addrs(ctx, ns, "lan", pfx(natLAN4, lanPrefix4.Bits()), lan6)
}

func (l *Lab) buildClient(ctx context.Context, v6 bool) error {
	ns := l.client.NS
	if !v6 {
		if err := setSysctls(ns, "net.ipv6.conf.all.disable_ipv6", "1", "net.ipv6.conf.default.disable_ipv6", "1"); err != nil {
			return err
		}
	}
	lan6 := ""
	if v6 {
		lan6 = pfx(clientLAN6, lanPrefix6.Bits())
	}
	if err := l.addrs(ctx, ns, "eth0", pfx(clientLAN4, lanPrefix4.Bits()), lan6); err != nil {
		return err
	}
	if err := l.tools.ipn(ctx, ns, "route", "add", "default", "via", natLAN4.String()); err != nil {
		return err
	}
	if v6 {
		return l.tools.ipn(ctx, ns, "-6", "route", "add", "default", "via", natLAN6.String())
	}
	return nil
}

func (l *Lab) buildPublic(ctx context.Context, i int, h *Host) error {
	seg, a4, a6 := publicAddrs(i)
	if err := l.attach(ctx, h.NS, "eth0", seg, h.Name); err != nil {
		return err
	}
	if err := l.addrs(ctx, h.NS, "eth0", pfx(a4, segBits4), pfx(a6, segBits6)); err != nil {
		return err
	}
	r4, r6 := seg.host(1)
	if err := l.tools.ipn(ctx, h.NS, "route", "add", "default", "via", r4.String()); err != nil {
		return err
	}
	return l.tools.ipn(ctx, h.NS, "-6", "route", "add", "default", "via", r6.String())
}
