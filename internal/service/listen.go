package service

import (
	"errors"
	"fmt"
	"net"
	"os"
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
