package natt

import (
	"errors"
	"fmt"
)

// Sentinel errors.
var (
	ErrNoResponse = errors.New("natt: STUN server did not answer")
	ErrBadMessage = errors.New("natt: malformed STUN message")
	ErrNoAddress  = errors.New("natt: STUN response carries no mapped address")
	ErrClosed     = errors.New("natt: closed")
)

// ConfigError reports an invalid configuration field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string { return fmt.Sprintf("natt: config %s: %s", e.Field, e.Reason) }
