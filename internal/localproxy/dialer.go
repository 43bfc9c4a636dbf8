package localproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"quictunnel/httpproxy"
	"quictunnel/quictun"
)

// tunnelDialer opens browser sessions through the QUIC tunnel and turns the
// tunnel's errors into the HTTP status the browser sees. This is the one
// place where that mapping lives.
type tunnelDialer struct {
	client   *quictun.Client
	sessions *sessionTracker
	// loopbackOnly: the proxy listens on loopback only, so its browsers
	// are on this computer and may reach its localhost names.
	loopbackOnly bool
}

func (d tunnelDialer) DialTarget(ctx context.Context, target string) (net.Conn, error) {
	if host, port, err := net.SplitHostPort(target); err == nil && isLocalhostName(host) {
		if !d.loopbackOnly {
			return nil, &httpproxy.DialError{Status: http.StatusForbidden, Err: errLocalhostRemote,
				Reason: fmt.Sprintf("%s is this computer's loopback, which localproxy does not open to other machines (it listens beyond loopback)", host)}
		}
		c, err := dialLoopback(ctx, host, port)
		if tc, ok := c.(*net.TCPConn); ok && d.sessions.ins != nil {
			return &localConn{TCPConn: tc, ins: d.sessions.ins, target: target, start: time.Now()}, nil
		}
		return c, err
	}
	conn, err := d.client.Dial(ctx, target)
	if err != nil {
		return nil, dialError(err)
	}
	tc := &trackedConn{StreamConn: conn, t: d.sessions, target: target, start: time.Now()}
	d.sessions.add(tc)
	return tc, nil
}

// isOpenFailure reports whether err says a session could not be opened,
// rather than that one failed after it was.
func isOpenFailure(err error) bool {
	var se *quictun.SessionError
	return errors.As(err, &se) || errors.Is(err, quictun.ErrCoordinatorUnavailable)
}

// dialError maps a tunnel error to the status and reason a person can act
// on: 502 the target is unreachable, 503 coordinator is, 504 something took
// too long, 403 the target is not allowed.
func dialError(err error) error {
	status := http.StatusBadGateway
	var se *quictun.SessionError
	switch {
	case errors.As(err, &se):
		switch se.Code {
		case quictun.CodeTargetForbidden:
			status = http.StatusForbidden
		case quictun.CodeTimeout, quictun.CodeDialBackFailed:
			status = http.StatusGatewayTimeout
		case quictun.CodeLimit, quictun.CodeShutdown:
			status = http.StatusServiceUnavailable
		}
	case errors.Is(err, quictun.ErrDialBackTimeout):
		status = http.StatusGatewayTimeout
	case errors.Is(err, quictun.ErrCoordinatorUnavailable), errors.Is(err, quictun.ErrTooManySessions):
		status = http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		status = http.StatusGatewayTimeout
	}
	return &httpproxy.DialError{Status: status, Reason: err.Error(), Err: err}
}

// errLocalhostRemote is the error of a localhost target refused because the
// proxy serves other machines.
var errLocalhostRemote = errors.New("localhost target refused: the proxy listens beyond loopback")

// isLocalhostName reports whether host is "localhost" or a name under it
// ("app.localhost", any case, with or without the final dot): names
// RFC 6761 §6.3 reserves for this computer's loopback.
func isLocalhostName(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// dialLoopback reaches port on this computer's loopback, 127.0.0.1 first,
// then ::1: a localhost name means the user's own computer, never
// coordinator's (whose target policy refuses loopback anyway), so it does
// not go through the tunnel.
func dialLoopback(ctx context.Context, host, port string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", port))
	if err == nil {
		return c, nil
	}
	if c6, err6 := d.DialContext(ctx, "tcp", net.JoinHostPort("::1", port)); err6 == nil {
		return c6, nil
	}
	return nil, &httpproxy.DialError{Status: http.StatusBadGateway, Err: err,
		Reason: fmt.Sprintf("%s is this computer (*.localhost is loopback, RFC 6761), and nothing answers on its port %s: %v", host, port, err)}
}
