//go:build unix

package httpproxy

import (
	"net"
	"syscall"
)

// waitReadable waits until c has bytes to read (or its end, or an error),
// without reading them and without a buffer, honouring c's read deadline.
// It reports false when c is not a socket it can wait on this way.
func waitReadable(c net.Conn) (bool, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, nil
	}
	var b [1]byte
	polled := false
	err = rc.Read(func(fd uintptr) bool {
		if polled {
			// Called again because the netpoller saw the socket readable:
			// the caller's read finds the bytes without a second look
			// here, and waits again itself after a spurious wake-up.
			return true
		}
		polled = true
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN && err != syscall.EINTR // anything else: let the read see it
	})
	return true, err
}

// canWaitReadable reports whether waitReadable works on c.
func canWaitReadable(c net.Conn) bool {
	_, ok := c.(syscall.Conn)
	return ok
}
