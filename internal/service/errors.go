package service

import "fmt"

// SettingError reports a setting (a flag, its environment variable or its
// key in the --config file) that the service cannot use. Main prints it as
// one line and exits with status 2.
type SettingError struct {
	// Setting is the flag as a user writes it, e.g. "--log-level".
	Setting string
	// Value is the offending value; empty when the setting is missing.
	Value string
	// Reason says what is wrong or what is wanted.
	Reason string
}

func (e *SettingError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: %s", e.Setting, e.Reason)
	}
	return fmt.Sprintf("%s %q: %s", e.Setting, e.Value, e.Reason)
}
