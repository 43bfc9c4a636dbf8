//go:build unix

package localproxy

import (
	"errors"
	"net"
	"syscall"
)

// canShareProxyPort says whether uiMux can peek at connections here.
const canShareProxyPort = true

// peek reads c's first bytes, as many as have arrived (at least one),
// leaving them in the socket for whoever reads c next.
func peek(c net.Conn, b []byte) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, errors.ErrUnsupported
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var perr error
	err = raw.Read(func(fd uintptr) bool {
		n, _, perr = syscall.Recvfrom(int(fd), b, syscall.MSG_PEEK)
		return !errors.Is(perr, syscall.EAGAIN)
	})
	if err != nil {
		return 0, err
	}
	if perr == nil && n == 0 {
		perr = errors.New("connection closed")
	}
	return n, perr
}
