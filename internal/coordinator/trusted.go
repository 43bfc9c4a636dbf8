package coordinator

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseTrustedProxies parses the trusted proxies of Config.TrustedProxies:
// each spec is a comma-separated list of CIDR prefixes ("10.0.0.0/8") or
// addresses ("2001:db8::1", which stand for themselves alone).
func ParseTrustedProxies(specs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, spec := range specs {
		for s := range strings.SplitSeq(spec, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil || a.Zone() != "" {
					return nil, fmt.Errorf("trusted proxy %q: want an address or CIDR prefix: %w", s, err)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			if p.Addr().Is4In6() { // peers are compared unmapped
				if p.Bits() < 96 {
					return nil, fmt.Errorf("trusted proxy %q: an IPv4-mapped prefix must be /96 or longer", s)
				}
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			out = append(out, p.Masked())
		}
	}
	return out, nil
}
