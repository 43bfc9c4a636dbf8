package quictun

import (
	"errors"
	"fmt"

	"github.com/quic-go/quic-go"
)

// Sentinel errors. Callers match them with errors.Is.
var (
	ErrProtocol               = errors.New("quictun: protocol violation")
	ErrVersion                = errors.New("quictun: unsupported protocol version")
	ErrAuthFailed             = errors.New("quictun: coordinator refused the token")
	ErrUntrustedCoordinator   = errors.New("quictun: coordinator's certificate is not trusted")
	ErrCoordinatorUnavailable = errors.New("quictun: coordinator unreachable")
	ErrDialBackTimeout        = errors.New("quictun: dial-back did not arrive in time")
	ErrSessionUnknown         = errors.New("quictun: unknown or expired session")
	ErrTooManySessions        = errors.New("quictun: session table full")
	// ErrTargetForbidden, wrapped in an error from ServerConfig.DialTarget,
	// makes the session fail with CodeTargetForbidden (403) instead of
	// CodeTargetUnreachable: the target is refused by policy.
	ErrTargetForbidden = errors.New("target refused by coordinator's policy")
	ErrClosed          = errors.New("quictun: closed")
)

// errSessionAbandoned: the client reset a dial-back stream instead of
// acknowledging it, because the session was given up (its browser left)
// while it was set up. The dial-back connection answered: it works.
var errSessionAbandoned = errors.New("session abandoned by the client")

// SessionError reports why coordinator could not open a session: the code
// and reason from OpenResult, or from a stream reset.
type SessionError struct {
	Target string
	Code   ErrorCode
	Reason string
}

func (e *SessionError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("session to %s: %s", e.Target, e.Code)
	}
	return fmt.Sprintf("session to %s: %s: %s", e.Target, e.Code, e.Reason)
}

// Outcome names how a relayed session ended, for access logs: "ok",
// "canceled" when the other end of the tunnel abandoned it (a browser
// closing a connection it no longer needs, a public client going away:
// routine, not a fault), or "error".
func Outcome(err error) string {
	var se *quic.StreamError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &se) && se.Remote && ErrorCode(se.ErrorCode) == CodeCanceled:
		return "canceled"
	}
	return "error"
}

// PeerShutDown reports whether err is the peer closing the connection
// because it is shutting down (CodeShutdown): a client that is going
// offline, say, rather than a fault.
func PeerShutDown(err error) bool {
	var ae *quic.ApplicationError
	return errors.As(err, &ae) && ae.Remote && ErrorCode(ae.ErrorCode) == CodeShutdown
}

// ConfigError reports an invalid configuration field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string { return fmt.Sprintf("quictun: config %s: %s", e.Field, e.Reason) }

// authError translates a connection closed by coordinator with
// CodeUnauthorized into ErrAuthFailed, keeping the coordinator's reason.
func authError(err error) error {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ErrorCode(ae.ErrorCode) == CodeUnauthorized && ae.Remote {
		return fmt.Errorf("%w: %s", ErrAuthFailed, ae.ErrorMessage)
	}
	return err
}
