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

// UsageError is an error in what the user gave (flags, environment,
// --config file) whose message already names the setting, such as a value
// a package refused. Main prints it and exits with status 2; other errors
// from App.Run exit 1.
type UsageError struct{ Err error }

// Usage marks err (nil stays nil) as a *UsageError.
func Usage(err error) error {
	if err == nil {
		return nil
	}
	return &UsageError{Err: err}
}

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// FieldFlags names, for each field of a package's Config that a flag sets,
// that flag without its dashes ("Token": "token"). Cmd glue uses it to
// report the package's ConfigError{Field, Reason} as the flag a user gave.
type FieldFlags map[string]string

// Setting returns a *SettingError naming the flag that sets field, with
// reason; a field no flag sets gives a *UsageError holding err as it is.
func (f FieldFlags) Setting(field, reason string, err error) error {
	if name, ok := f[field]; ok {
		return &SettingError{Setting: "--" + name, Reason: reason}
	}
	return &UsageError{Err: err}
}
