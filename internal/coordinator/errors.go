package coordinator

import "fmt"

// ConfigError reports an invalid Config field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("coordinator: config %s: %s", e.Field, e.Reason)
}
