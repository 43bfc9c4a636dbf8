package coordinator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"quictunnel/internal/metrics"
	"quictunnel/quictun"
)

// TargetPolicy decides which targets coordinator dials for clients, so
// that it cannot be used to reach what sits behind it (SSRF). The zero
// value refuses loopback, private, link-local, CGNAT, unspecified,
// multicast and reserved addresses and coordinator's own addresses, and
// dials everything else.
//
// The check applies to the address actually dialed, after DNS resolution,
// so a name that resolves (or re-resolves) to a refused address is
// refused too.
type TargetPolicy struct {
	// AllowPrivate opens every address class refused by default.
	AllowPrivate bool
	// Allow lists targets allowed even if private: a CIDR ("10.1.0.0/16"),
	// an IP, a host name ("intranet.example") or every name under a
	// suffix ("*.example"). An allowed name may resolve to any address.
	Allow []string
	// OnlyAllowed refuses everything not on Allow. A host name not on Allow
	// is refused without a DNS lookup.
	OnlyAllowed bool
	// DenyPorts are ports never dialed (e.g. 25), even on allowed targets.
	DenyPorts []int
	// DNSCacheTTL is how long the addresses a target name resolved to are
	// reused for new sessions. When cached addresses fail, or do not
	// answer within half the dial timeout, the name is looked up again at
	// once. Default DefaultDNSCacheTTL; negative: every session resolves
	// its target.
	DNSCacheTTL time.Duration
}

// blockedPrefixes are the address classes refused unless AllowPrivate.
// The documentation and benchmarking ranges (198.18.0.0/15,
// 198.51.100.0/24, 203.0.113.0/24, 192.0.2.0/24, 2001:db8::/32) are not
// among them: they are not routed on the internet, and the NAT lab uses
// them as its public side.
var blockedPrefixes = []struct {
	prefix netip.Prefix
	class  string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
	{netip.MustParsePrefix("10.0.0.0/8"), "private"},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private"},
	{netip.MustParsePrefix("192.0.0.0/24"), "reserved"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "private"},
	{netip.MustParsePrefix("fc00::/7"), "private"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// IPv6 addresses that carry an IPv4 address, which the policy checks as
// well: a host with a NAT64 gateway, a 6to4 (sit) or Teredo interface, or
// an SIIT translator reaches that IPv4 address through them. IPv4-mapped
// addresses (::ffff:0:0/96) are unmapped before any check; IPv4-compatible
// ones (::/96, deprecated by RFC 4291) are refused outright as reserved,
// like the rest of ::/8 and 100::/64.
var (
	nat64Prefix      = netip.MustParsePrefix("64:ff9b::/96")    // RFC 6052: IPv4 in the last 32 bits
	sixToFour        = netip.MustParsePrefix("2002::/16")       // RFC 3056: IPv4 in bits 16-47
	teredo           = netip.MustParsePrefix("2001::/32")       // RFC 4380: server IPv4 in bits 32-63, client IPv4 inverted in the last 32
	ipv4Translated   = netip.MustParsePrefix("::ffff:0:0:0/96") // RFC 2765 (SIIT): IPv4 in the last 32 bits
	ipv4Compatible   = netip.MustParsePrefix("::/96")           // RFC 4291 §2.5.5.1, deprecated
	reservedIETF     = netip.MustParsePrefix("::/8")            // RFC 4291: reserved by the IETF
	discardOnly      = netip.MustParsePrefix("100::/64")        // RFC 6666
	embeddedV4Checks = []struct {
		prefix netip.Prefix
		via    string
		at     []int // byte offsets of the IPv4 addresses in the IPv6 one
		invert bool  // Teredo stores the client address inverted
	}{
		{nat64Prefix, "NAT64", []int{12}, false},
		{ipv4Translated, "SIIT", []int{12}, false},
		{sixToFour, "6to4", []int{2}, false},
		{teredo, "Teredo", []int{4, 12}, true},
	}
)

// embeddedV4 returns the IPv4 addresses ip carries (see embeddedV4Checks)
// and the mechanism that carries them.
func embeddedV4(ip netip.Addr) (addrs []netip.Addr, via string) {
	if !ip.Is6() {
		return nil, ""
	}
	b := ip.As16()
	for _, e := range embeddedV4Checks {
		if !e.prefix.Contains(ip) {
			continue
		}
		for i, at := range e.at {
			v4 := [4]byte(b[at : at+4])
			if e.invert && i == len(e.at)-1 {
				for j := range v4 {
					v4[j] ^= 0xff
				}
			}
			addrs = append(addrs, netip.AddrFrom4(v4))
		}
		return addrs, e.via
	}
	return nil, ""
}

// targetPolicy is a TargetPolicy compiled for checking.
type targetPolicy struct {
	allowPrivate bool
	onlyAllowed  bool
	prefixes     []netip.Prefix
	names        map[string]bool
	suffixes     []string // ".example" for "*.example"
	denyPorts    map[int]bool
	own          map[netip.Addr]bool
	hosts        *hostCache
}

// compile validates p and prepares it; own are coordinator's own
// addresses.
func (p TargetPolicy) compile(own []netip.Addr) (*targetPolicy, error) {
	ttl := p.DNSCacheTTL
	if ttl == 0 {
		ttl = DefaultDNSCacheTTL
	}
	c := &targetPolicy{allowPrivate: p.AllowPrivate, onlyAllowed: p.OnlyAllowed,
		names: map[string]bool{}, denyPorts: map[int]bool{}, own: map[netip.Addr]bool{},
		hosts: newHostCache(ttl)}
	for _, a := range p.Allow {
		if err := c.addAllowed(a); err != nil {
			return nil, &ConfigError{Field: "TargetPolicy.Allow", Reason: err.Error()}
		}
	}
	for _, port := range p.DenyPorts {
		if port < 1 || port > 65535 {
			return nil, &ConfigError{Field: "TargetPolicy.DenyPorts", Reason: fmt.Sprintf("%d is not a port (1-65535)", port)}
		}
		c.denyPorts[port] = true
	}
	for _, a := range own {
		c.own[a.Unmap()] = true
	}
	return c, nil
}

func (c *targetPolicy) addAllowed(a string) error {
	a = strings.TrimSpace(a)
	if pfx, err := netip.ParsePrefix(a); err == nil {
		c.prefixes = append(c.prefixes, pfx.Masked())
		return nil
	}
	if ip, err := netip.ParseAddr(a); err == nil {
		ip = ip.Unmap()
		c.prefixes = append(c.prefixes, netip.PrefixFrom(ip, ip.BitLen()))
		return nil
	}
	name, wild := strings.CutPrefix(a, "*.")
	name = normalizeHost(name)
	if !validHostName(name) {
		return fmt.Errorf("%q is not a CIDR, an IP, a host name or *.suffix", a)
	}
	if wild {
		c.suffixes = append(c.suffixes, "."+name)
	} else {
		c.names[name] = true
	}
	return nil
}

// normalizeHost lower-cases a host name and drops a final dot.
func normalizeHost(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }

// validHostName reports whether h is a syntactically valid DNS name.
func validHostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if !quictun.ValidServiceName(label) {
			return false
		}
	}
	return true
}

// nameAllowed reports whether host (normalised) is on the allow-list.
func (c *targetPolicy) nameAllowed(host string) bool {
	return c.names[host] || slices.ContainsFunc(c.suffixes, func(s string) bool { return strings.HasSuffix(host, s) })
}

// checkAddr returns why ip may not be dialed, or "" if it may.
func (c *targetPolicy) checkAddr(ip netip.Addr) string {
	ip = ip.Unmap().WithZone("")
	if slices.ContainsFunc(c.prefixes, func(p netip.Prefix) bool { return p.Contains(ip) }) {
		return ""
	}
	if c.onlyAllowed {
		return ip.String() + " is not on the allow-list (--allow-target)"
	}
	if c.allowPrivate {
		return ""
	}
	if class := addrClass(ip); class != "" {
		return ip.String() + " is " + class + " (--allow-private-targets or --allow-target opens it)"
	}
	if c.own[ip] {
		return ip.String() + " is coordinator's own address (--allow-target opens it)"
	}
	if embedded, via := embeddedV4(ip); slices.ContainsFunc(embedded, func(a netip.Addr) bool { return c.own[a] }) {
		return ip.String() + " carries coordinator's own address (" + via + "; --allow-target opens it)"
	}
	return ""
}

// addrClass names the refused class ip belongs to, or "" if it is public.
func addrClass(ip netip.Addr) string {
	for _, b := range blockedPrefixes {
		if b.prefix.Contains(ip) {
			return b.class
		}
	}
	embedded, via := embeddedV4(ip)
	for _, v4 := range embedded {
		if class := addrClass(v4); class != "" {
			return class + " (" + via + ")"
		}
	}
	switch {
	case nat64Prefix.Contains(ip):
		return "" // inside ::/8, but a public IPv4 address translated
	case ipv4Compatible.Contains(ip):
		return "reserved (IPv4-compatible, deprecated)"
	case reservedIETF.Contains(ip), discardOnly.Contains(ip):
		return "reserved"
	}
	return ""
}

// forbidden wraps quictun.ErrTargetForbidden with the reason.
func forbidden(target, reason string) error {
	return fmt.Errorf("%w: %s: %s", quictun.ErrTargetForbidden, target, reason)
}

// dialer returns the function that dials targets under the policy.
func (c *targetPolicy) dialer() func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		host, portStr, err := net.SplitHostPort(address)
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", address, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil || port < 1 || port > 65535 {
			return nil, fmt.Errorf("target %q: bad port", address)
		}
		if c.denyPorts[port] {
			return nil, forbidden(address, "port "+portStr+" is denied (--deny-port)")
		}
		check := true // every address dialed is checked...
		var addrs []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			if reason := c.checkAddr(ip); reason != "" {
				return nil, forbidden(address, reason)
			}
			addrs = []netip.Addr{ip}
		} else if c.nameAllowed(normalizeHost(host)) {
			check = false // ...except those of a name on the allow-list
		} else if c.onlyAllowed {
			return nil, forbidden(address, host+" is not on the allow-list (--allow-target)") // no DNS lookup
		}
		d := &net.Dialer{}
		if check {
			// Control sees the address being dialed after resolution, so
			// a name resolving to a refused address is refused however
			// its DNS answers change.
			d.Control = func(_, addr string, _ syscall.RawConn) error {
				ap, err := netip.ParseAddrPort(addr)
				if err != nil {
					return forbidden(address, "cannot check address "+addr)
				}
				if reason := c.checkAddr(ap.Addr()); reason != "" {
					return forbidden(address, reason)
				}
				return nil
			}
		}
		dial := func(ctx context.Context, addrs []netip.Addr) (net.Conn, error) {
			if network != "tcp" {
				addrs = slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool {
					return network == "tcp4" && !a.Is4() || network == "tcp6" && a.Is4()
				})
			}
			if len(addrs) == 0 {
				return nil, &net.OpError{Op: "dial", Net: network, Err: &net.AddrError{Err: "no suitable address found", Addr: host}}
			}
			return dialAddrs(ctx, d, addrs, uint16(port))
		}
		var conn net.Conn
		if addrs != nil {
			conn, err = dial(ctx, addrs)
		} else {
			conn, err = c.dialName(ctx, network, host, dial)
		}
		if oe, ok := errors.AsType[*net.OpError](err); ok && errors.Is(err, quictun.ErrTargetForbidden) {
			return nil, oe.Err // the reason, without "dial tcp ADDR:" repeating it
		}
		return conn, err
	}
}

// dialName resolves host through the cache and dials its addresses. A
// cached name may have moved, and its old address may not even refuse:
// cached addresses get half the time left, and if they fail (other than
// by being refused by the policy), DNS is asked again and its answer
// dialed with the rest.
func (c *targetPolicy) dialName(ctx context.Context, network, host string,
	dial func(context.Context, []netip.Addr) (net.Conn, error)) (net.Conn, error) {
	addrs, cached, err := c.hosts.lookup(ctx, host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	if !cached {
		return dial(ctx, addrs)
	}
	first := ctx
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		first, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(deadline)/2))
		defer cancel()
	}
	conn, err := dial(first, addrs)
	if err == nil || ctx.Err() != nil || errors.Is(err, quictun.ErrTargetForbidden) {
		return conn, err
	}
	c.hosts.forget(host)
	fresh, _, lerr := c.hosts.lookup(ctx, host)
	if lerr != nil {
		return nil, err
	}
	return dial(ctx, fresh)
}

// registerMetrics counts how target names were resolved.
func (c *targetPolicy) registerMetrics(r *metrics.Registry) {
	r.LabeledCounter("target_name_lookups_total", "Target host names resolved, by where the addresses came from (cache or dns).",
		"source", []string{"cache", "dns"}, c.hosts.counts)
}

// String summarises the policy for the start-up log.
func (c *targetPolicy) String() string {
	var parts []string
	switch {
	case c.onlyAllowed:
		parts = append(parts, "only allowed")
	case c.allowPrivate:
		parts = append(parts, "any (private allowed)")
	default:
		parts = append(parts, "public")
	}
	if n := len(c.prefixes) + len(c.names) + len(c.suffixes); n > 0 {
		parts = append(parts, fmt.Sprintf("%d allowed", n))
	}
	if len(c.denyPorts) > 0 {
		ports := slices.Sorted(maps.Keys(c.denyPorts))
		parts = append(parts, fmt.Sprintf("ports denied %v", ports))
	}
	if c.hosts.ttl > 0 {
		parts = append(parts, "names cached "+c.hosts.ttl.String())
	} else {
		parts = append(parts, "names not cached")
	}
	return strings.Join(parts, ", ")
}

// ownAddrs returns the addresses of this host's interfaces.
func ownAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list own addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out, nil
}
