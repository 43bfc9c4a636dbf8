package natlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
)

// Host is one namespace of a lab.
type Host struct {
	Name string     // "client", "nat", "internet", "pub1", ...
	NS   string     // network namespace name, for `ip netns exec`
	IPv4 netip.Addr // the host's address (the NAT's WAN address for nat)
	IPv6 netip.Addr // likewise; invalid when the host has no IPv6

	lab *Lab
}

// String returns the host's name and namespace.
func (h *Host) String() string { return h.Name + " (" + h.NS + ")" }

// AddrPort4 returns h's IPv4 address with port.
func (h *Host) AddrPort4(port uint16) netip.AddrPort { return netip.AddrPortFrom(h.IPv4, port) }

// AddrPort6 returns h's IPv6 address with port.
func (h *Host) AddrPort6(port uint16) netip.AddrPort { return netip.AddrPortFrom(h.IPv6, port) }

// Command returns a command that runs name inside h's namespace (through
// `ip netns exec`). The caller runs and waits for it; ctx kills it. A
// process still running when the host or lab is removed is killed then.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, h.lab.tools.ip, append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// SetSysctl writes a network sysctl ("net.…" only: other keys are not
// per-namespace, so writing them would change the whole machine) inside h's
// namespace, e.g. "net.netfilter.nf_conntrack_udp_timeout".
func (h *Host) SetSysctl(key, value string) error {
	if !strings.HasPrefix(key, "net.") || strings.Contains(key, "..") || strings.Contains(key, "/") {
		return fmt.Errorf("sysctl %q: only net.* keys are per-namespace", key)
	}
	if h.lab.isRemoved(h.NS) {
		return fmt.Errorf("sysctl %s in %s: %w", key, h.Name, ErrHostRemoved)
	}
	return setSysctls(h.NS, key, value)
}

// Sysctl reads a network sysctl inside h's namespace.
func (h *Host) Sysctl(key string) (string, error) {
	if !strings.HasPrefix(key, "net.") || strings.Contains(key, "..") || strings.Contains(key, "/") {
		return "", fmt.Errorf("sysctl %q: only net.* keys are per-namespace", key)
	}
	if h.lab.isRemoved(h.NS) {
		return "", fmt.Errorf("sysctl %s in %s: %w", key, h.Name, ErrHostRemoved)
	}
	return getSysctl(h.NS, key)
}

// ListenUDP opens a UDP socket bound to addr (a numeric "ip:port"; ip may be
// empty for all addresses, port 0 picks one) inside h's namespace. The
// socket is closed when the host or lab is removed; closing it earlier is
// fine.
func (h *Host) ListenUDP(addr string) (*net.UDPConn, error) {
	ip, port, err := parseLiteral(addr)
	if err != nil {
		return nil, err
	}
	var c *net.UDPConn
	err = h.do(func() (err error) {
		c, err = net.ListenUDP("udp", &net.UDPAddr{IP: ip, Port: port})
		return err
	}, func() error { return c.Close() })
	if err != nil {
		return nil, fmt.Errorf("listen udp %s in %s: %w", addr, h.Name, err)
	}
	return c, nil
}

// ListenTCP opens a TCP listener on addr (as for ListenUDP) inside h's
// namespace, closed with the host or lab.
func (h *Host) ListenTCP(addr string) (*net.TCPListener, error) {
	ip, port, err := parseLiteral(addr)
	if err != nil {
		return nil, err
	}
	var ln *net.TCPListener
	err = h.do(func() (err error) {
		ln, err = net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: port})
		return err
	}, func() error { return ln.Close() })
	if err != nil {
		return nil, fmt.Errorf("listen tcp %s in %s: %w", addr, h.Name, err)
	}
	return ln, nil
}

// DialTCP connects from h's namespace to addr (a numeric "ip:port"). The
// connection is closed with the host or lab.
func (h *Host) DialTCP(ctx context.Context, addr string) (*net.TCPConn, error) {
	if _, _, err := parseLiteral(addr); err != nil {
		return nil, err
	}
	var c *net.TCPConn
	err := h.do(func() error {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		c = nc.(*net.TCPConn)
		return nil
	}, func() error { return c.Close() })
	if err != nil {
		return nil, fmt.Errorf("dial tcp %s from %s: %w", addr, h.Name, err)
	}
	return c, nil
}

// Do runs open inside h's namespace, for a socket of a kind the methods
// above do not open (a netlink socket, say); closeFn, if open succeeded,
// runs when the host or lab is removed. Any goroutine open starts runs in
// the caller's namespace, not h's.
func (h *Host) Do(open, closeFn func() error) error {
	if err := h.do(open, closeFn); err != nil {
		return fmt.Errorf("in %s: %w", h.Name, err)
	}
	return nil
}

// do runs open inside h's namespace and then registers closeFn to run when
// the host goes away; if the host went away meanwhile, it closes at once.
func (h *Host) do(open func() error, closeFn func() error) error {
	if h.lab.isRemoved(h.NS) {
		return ErrHostRemoved
	}
	if err := inNS(h.NS, open); err != nil {
		return err
	}
	if err := h.lab.track(h.NS, closerFunc(closeFn)); err != nil {
		_ = closeFn()
		return err
	}
	return nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// parseLiteral parses a numeric "ip:port"; the ip may be empty. Names are
// refused: resolving them would happen outside the lab.
func parseLiteral(addr string) (net.IP, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %q: %w", ErrBadAddress, addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %q: port: %w", ErrBadAddress, addr, err)
	}
	if host == "" {
		return nil, int(port), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return nil, 0, fmt.Errorf("%w: %q", ErrBadAddress, addr)
	}
	return ip.AsSlice(), int(port), nil
}
