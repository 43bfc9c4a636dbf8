package dnshook

import (
	"errors"
	"fmt"
)

// ErrTimeout is the cause of a HookError when the hook ran longer than
// Config.Timeout and was killed.
var ErrTimeout = errors.New("timed out")

// ConfigError reports an invalid Config field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("dnshook: config %s: %s", e.Field, e.Reason)
}

// HookError is a call of the hook that failed: it exited non-zero, could
// not start, or timed out. Stderr is what it wrote there (its end, if
// long).
type HookError struct {
	Path   string
	Action string // present or cleanup
	FQDN   string
	Err    error
	Stderr string
}

func (e *HookError) Error() string {
	s := fmt.Sprintf("DNS-01 hook %s %s %s: %v", e.Path, e.Action, e.FQDN, e.Err)
	if e.Stderr != "" {
		s += ": stderr: " + e.Stderr
	}
	return s
}

func (e *HookError) Unwrap() error { return e.Err }
