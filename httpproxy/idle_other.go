//go:build !unix

package httpproxy

import "net"

func waitReadable(net.Conn) (bool, error) { return false, nil }

func canWaitReadable(net.Conn) bool { return false }
