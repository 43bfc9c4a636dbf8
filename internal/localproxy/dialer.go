package localproxy

import (
	"context"
	"errors"
	"net"
	"net/http"
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
}

func (d tunnelDialer) DialTarget(ctx context.Context, target string) (net.Conn, error) {
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
