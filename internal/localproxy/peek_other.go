//go:build !unix

package localproxy

import (
	"errors"
	"net"
)

const canShareProxyPort = false

func peek(net.Conn, []byte) (int, error) { return 0, errors.ErrUnsupported }
