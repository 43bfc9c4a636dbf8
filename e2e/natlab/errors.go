package natlab

import (
	"errors"
	"fmt"
)

var (
	// ErrUnavailable means this machine cannot run a lab: not root, a
	// required command is missing, or network namespaces cannot be created.
	// New skips the test on it (or fails it when $CI is set).
	ErrUnavailable = errors.New("natlab: network-namespace lab unavailable")
	// ErrHostRemoved is returned by a Host's methods after Lab.RemoveHost.
	ErrHostRemoved = errors.New("natlab: host removed")
	// ErrBadAddress is returned for a socket address that is not a numeric
	// ip:port literal (host names would be resolved outside the lab).
	ErrBadAddress = errors.New("natlab: address must be a numeric ip:port")
)

// ConfigError reports an invalid Options field.
type ConfigError struct {
	Field  string // name of the Options field
	Reason string // what is wrong with it
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("natlab: invalid Options.%s: %s", e.Field, e.Reason)
}
