//go:build !linux

package service

import "net"

// UDPBufferSize is the socket buffer size quic-go asks for (7 MiB).
const UDPBufferSize = 7 << 20

// SetUDPBuffers leaves the buffers to quic-go outside Linux (which logs
// its own advice if it cannot raise them).
func SetUDPBuffers(c *net.UDPConn) (advice string, err error) { return "", nil }
