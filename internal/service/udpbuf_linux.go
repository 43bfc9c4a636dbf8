package service

import (
	"fmt"
	"net"
	"strings"
	"syscall"
)

// UDPBufferSize is the socket buffer size quic-go asks for (7 MiB): with
// less, bursts at high rates overflow the socket and packets are lost.
const UDPBufferSize = 7 << 20

// SetUDPBuffers raises c's receive and send buffers to UDPBufferSize,
// beyond the kernel's limit when the process may (CAP_NET_ADMIN). When the
// kernel keeps them smaller it returns advice for the startup log with the
// exact sysctl command that lifts the limit; "" when all is well. (The
// sizes are compared as quic-go does, with the doubled value the kernel
// reports, so quic-go is satisfied exactly when this is.)
func SetUDPBuffers(c *net.UDPConn) (advice string, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", fmt.Errorf("UDP socket buffers: %w", err)
	}
	var short, sysctls []string
	for _, b := range []struct {
		name, sysctl string
		set          func(int) error
		opt, force   int
	}{
		{"receive", "net.core.rmem_max", c.SetReadBuffer, syscall.SO_RCVBUF, syscall.SO_RCVBUFFORCE},
		{"send", "net.core.wmem_max", c.SetWriteBuffer, syscall.SO_SNDBUF, syscall.SO_SNDBUFFORCE},
	} {
		size, err := sockopt(rc, b.opt)
		if err != nil {
			return "", err
		}
		if size >= UDPBufferSize {
			continue
		}
		b.set(UDPBufferSize) // capped at the sysctl limit, silently
		if size, err = sockopt(rc, b.opt); err != nil {
			return "", err
		}
		if size < UDPBufferSize {
			rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, b.force, UDPBufferSize) })
			if size, err = sockopt(rc, b.opt); err != nil {
				return "", err
			}
		}
		if size < UDPBufferSize {
			short = append(short, fmt.Sprintf("%s %d KiB", b.name, size/2/1024))
			sysctls = append(sysctls, fmt.Sprintf("%s=%d", b.sysctl, UDPBufferSize))
		}
	}
	if len(short) == 0 {
		return "", nil
	}
	return fmt.Sprintf("the kernel keeps the UDP socket buffers at %s, below the %d KiB QUIC wants at high rates "+
		"(bursts are dropped, throughput suffers); to lift the limit run as root: sysctl -w %s "+
		"(and add it to /etc/sysctl.conf to keep it)", strings.Join(short, ", "), UDPBufferSize/1024, strings.Join(sysctls, " ")), nil
}

func sockopt(rc syscall.RawConn, opt int) (int, error) {
	var size int
	var serr error
	if err := rc.Control(func(fd uintptr) { size, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, opt) }); err != nil {
		return 0, fmt.Errorf("UDP socket buffers: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("UDP socket buffers: %w", serr)
	}
	return size, nil
}
