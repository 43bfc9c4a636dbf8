package httpproxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"syscall"
)

// DialError lets a Dialer choose the status the browser sees and the
// reason it reads.
type DialError struct {
	Status int    // HTTP status, e.g. 502, 503, 504
	Reason string // shown to the user
	Err    error
}

func (e *DialError) Error() string { return e.Reason }
func (e *DialError) Unwrap() error { return e.Err }

// clientGone reports whether err says the client hung up: a browser
// closing a connection it no longer needs (a video seeking abandons its
// range request), not a fault. Upstreams here are tunnel streams, whose
// errors are QUIC's, so a socket error like these is the client's.
func clientGone(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ENOTCONN)
}

// errProxyAuth is the access-log outcome of a request refused with 407.
var errProxyAuth = errors.New("proxy authentication required")

// ConfigError reports an invalid configuration field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("httpproxy: config %s: %s", e.Field, e.Reason)
}

// statusOf picks the status and reason for a dial failure: the Dialer's
// choice if it made one, 504 for a timeout, 502 otherwise.
func statusOf(target string, err error) (int, string) {
	var de *DialError
	switch {
	case errors.As(err, &de):
		return de.Status, de.Reason
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, fmt.Sprintf("timed out reaching %s", target)
	}
	return http.StatusBadGateway, fmt.Sprintf("cannot reach %s: %v", target, err)
}
