package service

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
)

// ListenUDP opens a UDP socket on addr (":port" listens on IPv4 and IPv6).
// Its errors say what to do about a busy port, a privileged port or an
// address the machine does not have.
func ListenUDP(addr string) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("UDP address %q: %w", addr, err)
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, listenError("UDP", addr, err)
	}
	return pc, nil
}

// ListenTCP opens a TCP listener on addr, with errors like ListenUDP's.
func ListenTCP(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, listenError("TCP", addr, err)
	}
	return ln, nil
}

func listenError(proto, addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("listen on %s %s: port in use: another process (or another copy of this one) has it; choose another address: %w", proto, addr, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("listen on %s %s: permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE: %w", proto, addr, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("listen on %s %s: this machine has no such address: %w", proto, addr, err)
	}
	return fmt.Errorf("listen on %s %s: %w", proto, addr, err)
}

// CheckListenAddr returns a *SettingError naming setting (e.g.
// "--listen") when addr is not an address a listener can be asked for:
// "host:port" or ":port", host an IP address or a host name, port a number
// up to 65535 or a service name. Whether it can be bound is found only by
// listening: a busy port is a failure while running, not a setting error.
func CheckListenAddr(setting, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &SettingError{Setting: setting, Value: addr, Reason: "want HOST:PORT or :PORT"}
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return &SettingError{Setting: setting, Value: addr, Reason: fmt.Sprintf("%q is not a port", port)}
	}
	if host != "" && !validHost(host) {
		return &SettingError{Setting: setting, Value: addr, Reason: fmt.Sprintf("%q is not an IP address or host name", host)}
	}
	return nil
}

// CheckHost returns a *SettingError naming setting when host (not empty)
// is not an IP address or a host name.
func CheckHost(setting, host string) error {
	if host != "" && !validHost(host) {
		return &SettingError{Setting: setting, Value: host, Reason: "want an IP address or host name (no port)"}
	}
	return nil
}

// validHost reports whether h is an IP address (an IPv6 one may have a
// zone) or a syntactically valid DNS host name.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(h, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}
