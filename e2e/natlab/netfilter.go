package natlab

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The conntrack sysctls that are the NAT's UDP mapping lifetime: for a flow
// seen in one direction (or briefly in both) and for a long-lived two-way
// "stream".
const (
	sysctlUDPTimeout       = "net.netfilter.nf_conntrack_udp_timeout"
	sysctlUDPTimeoutStream = "net.netfilter.nf_conntrack_udp_timeout_stream"
)

// filterRules is the router's stateful filter, the same for both families:
// replies and LAN-to-WAN traffic are forwarded, new inbound traffic is not.
// Traffic to the router itself (an inbound packet without a mapping lands
// there) is answered with ICMP port unreachable, as on a real router.
const filterRules = `*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i lan -o wan -j ACCEPT
COMMIT
`

// natRules returns the masquerading rules for kind.
func natRules(kind NATKind) string {
	target := "MASQUERADE"
	if kind == Symmetric {
		target += " --random-fully"
	}
	return `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o wan -j ` + target + `
COMMIT
`
}

// buildFirewall loads the nat namespace's rules (which loads conntrack
// there) and then applies Options.UDPTimeout.
func (l *Lab) buildFirewall(ctx context.Context) error {
	ns := l.nat.NS
	if _, err := l.tools.execIn(ctx, ns, filterRules+natRules(l.opts.NAT), l.tools.iptablesRestore); err != nil {
		return err
	}
	switch l.opts.IPv6 {
	case IPv6NAT66:
		if _, err := l.tools.execIn(ctx, ns, filterRules+natRules(l.opts.NAT), l.tools.ip6tablesRestore); err != nil {
			return err
		}
	case IPv6Firewall:
		if _, err := l.tools.execIn(ctx, ns, filterRules, l.tools.ip6tablesRestore); err != nil {
			return err
		}
	}
	var err error
	for i, k := range []string{sysctlUDPTimeout, sysctlUDPTimeoutStream} {
		if l.udpDefault[i], err = getSysctl(ns, k); err != nil {
			return err
		}
	}
	if l.opts.UDPTimeout > 0 {
		return l.SetUDPTimeout(l.opts.UDPTimeout)
	}
	return nil
}

// SetUDPTimeout sets how long the NAT keeps an idle UDP mapping (both
// nf_conntrack_udp_timeout and nf_conntrack_udp_timeout_stream in the nat
// namespace), rounded up to whole seconds. Zero restores the kernel's
// defaults. It applies to mappings created afterwards and to existing ones
// at their next packet.
func (l *Lab) SetUDPTimeout(d time.Duration) error {
	if d < 0 {
		return &ConfigError{Field: "UDPTimeout", Reason: "negative"}
	}
	if l.isRemoved(l.nat.NS) {
		return fmt.Errorf("set UDP timeout: %w", ErrHostRemoved)
	}
	v, vs := l.udpDefault[0], l.udpDefault[1]
	if d > 0 {
		v = strconv.FormatInt(int64((d+time.Second-1)/time.Second), 10)
		vs = v
	}
	return setSysctls(l.nat.NS, sysctlUDPTimeout, v, sysctlUDPTimeoutStream, vs)
}

// UDPTimeout returns the NAT's current nf_conntrack_udp_timeout and
// nf_conntrack_udp_timeout_stream.
func (l *Lab) UDPTimeout() (timeout, stream time.Duration, err error) {
	var out [2]time.Duration
	for i, k := range []string{sysctlUDPTimeout, sysctlUDPTimeoutStream} {
		s, err := getSysctl(l.nat.NS, k)
		if err != nil {
			return 0, 0, err
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, 0, fmt.Errorf("sysctl %s = %q: %w", k, s, err)
		}
		out[i] = time.Duration(n) * time.Second
	}
	return out[0], out[1], nil
}

// FlushConntrack deletes every conntrack entry (IPv4 and IPv6) in the nat
// namespace: the NAT forgets all its mappings, and nothing from outside gets
// in until the client sends again.
func (l *Lab) FlushConntrack() error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var errs []error
	for _, fam := range []string{"ipv4", "ipv6"} {
		if _, err := l.tools.execIn(ctx, l.nat.NS, "", l.tools.conntrack, "-F", "-f", fam); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("flush conntrack: %w", err)
	}
	return nil
}

// RemapPorts makes the NAT map the client anew, as a NAT that lost its
// state and does not keep source ports would: from now on its UDP mappings
// take public ports 20000-29999 (Linux's ephemeral range starts above, so
// every mapping's port changes), and every existing mapping is forgotten
// (FlushConntrack). The mapping and filtering behaviour stay what Options
// asked for.
func (l *Lab) RemapPorts() error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmds := []string{l.tools.iptables}
	if l.opts.IPv6 == IPv6NAT66 {
		cmds = append(cmds, l.tools.ip6tables)
	}
	args := []string{"-t", "nat", "-I", "POSTROUTING", "1", "-o", "wan", "-p", "udp", "-j", "MASQUERADE", "--to-ports", "20000-29999"}
	if l.opts.NAT == Symmetric {
		args = append(args, "--random-fully")
	}
	for _, cmd := range cmds {
		if _, err := l.tools.execIn(ctx, l.nat.NS, "", cmd, args...); err != nil {
			return fmt.Errorf("remap ports: %w", err)
		}
	}
	return l.FlushConntrack()
}

// Conntrack lists the NAT's conntrack table (`conntrack -L`, IPv4 then
// IPv6), one entry per line, for assertions and for debugging.
func (l *Lab) Conntrack(ctx context.Context) (string, error) {
	var b strings.Builder
	for _, fam := range []string{"ipv4", "ipv6"} {
		out, err := l.tools.execIn(ctx, l.nat.NS, "", l.tools.conntrack, "-L", "-f", fam)
		if err != nil {
			return b.String(), fmt.Errorf("list conntrack: %w", err)
		}
		b.WriteString(out)
	}
	return b.String(), nil
}

// diagnostics describes the NAT's state for a failed test's log.
func (l *Lab) diagnostics(ctx context.Context) string {
	var b strings.Builder
	ct, err := l.Conntrack(ctx)
	fmt.Fprintf(&b, "conntrack -L:\n%s", ct)
	if err != nil {
		fmt.Fprintf(&b, "(%v)\n", err)
	}
	for _, cmd := range []string{l.tools.iptables, l.tools.ip6tables} {
		for _, table := range []string{"filter", "nat"} {
			out, err := l.tools.execIn(ctx, l.nat.NS, "", cmd, "-t", table, "-L", "-v", "-n")
			fmt.Fprintf(&b, "%s -t %s -L -v -n:\n%s", filepath.Base(cmd), table, out)
			if err != nil {
				fmt.Fprintf(&b, "(%v)\n", err)
			}
		}
	}
	return b.String()
}
