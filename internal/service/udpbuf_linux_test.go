package service

import (
	"syscall"
	"testing"
)

// TestSetUDPBuffers: the buffers end at least as large as quic-go asks,
// or the advice names the sysctl that lifts the kernel's limit.
func TestSetUDPBuffers(t *testing.T) {
	c, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	advice, err := SetUDPBuffers(c)
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := c.SyscallConn()
	for _, opt := range []int{syscall.SO_RCVBUF, syscall.SO_SNDBUF} {
		size, err := sockopt(rc, opt)
		if err != nil {
			t.Fatal(err)
		}
		if size < UDPBufferSize && advice == "" {
			t.Errorf("buffer option %d is %d bytes, below %d, and no advice given", opt, size, UDPBufferSize)
		}
	}
	if advice != "" {
		t.Logf("advice: %s", advice)
	}
}
