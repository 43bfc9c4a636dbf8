package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// Log formats and levels accepted by NewLogger (and --log-format,
// --log-level).
const (
	FormatText = "text"
	FormatJSON = "json"
)

// NewLogger returns a slog logger writing format ("text" or "json") at
// level ("debug", "info", "warn" or "error", any case) to w. Other values
// give a *SettingError naming the flag and the allowed values.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "info":
		lv = slog.LevelInfo
	case "warn":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return nil, &SettingError{Setting: "--log-level", Value: level, Reason: "want debug, info, warn or error"}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case FormatText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case FormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, &SettingError{Setting: "--log-format", Value: format, Reason: "want text or json"}
}

// OpenAccessLog opens (creating it, mode 0640, or appending to it) the file
// at path and returns an info-level logger writing format ("text" or
// "json") to it. Close the returned io.Closer when the service stops.
func OpenAccessLog(path, format string) (*slog.Logger, io.Closer, error) {
	// Check the format first so a bad one does not leave an empty file.
	if _, err := NewLogger(io.Discard, format, "info"); err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, &UsageError{Err: fmt.Errorf("--access-log: %w", err)}
	}
	out := newBatchWriter(f)
	log, err := NewLogger(out, format, "info")
	if err != nil { // unreachable: the format was checked above
		out.Close()
		f.Close()
		return nil, nil, err
	}
	return log, closerFunc(func() error { out.Close(); return f.Close() }), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// AccessLogger returns the logger for request lines: log itself when path
// is empty, otherwise a logger that writes every record both to log's
// handler and to the file at path (see OpenAccessLog). The returned func
// closes the file; it is never nil when err is nil.
func AccessLogger(log *slog.Logger, path, format string) (*slog.Logger, func(), error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if path == "" {
		return log, func() {}, nil
	}
	file, c, err := OpenAccessLog(path, format)
	if err != nil {
		return nil, nil, err
	}
	return slog.New(teeHandler{log.Handler(), file.Handler()}), func() { c.Close() }, nil
}

// teeHandler sends every record to two handlers.
type teeHandler [2]slog.Handler

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return t[0].Enabled(ctx, l) || t[1].Enabled(ctx, l)
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var errs [2]error
	for i, h := range t {
		if h.Enabled(ctx, r.Level) {
			errs[i] = h.Handle(ctx, r.Clone())
		}
	}
	return errors.Join(errs[0], errs[1])
}

func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{t[0].WithAttrs(as), t[1].WithAttrs(as)}
}

func (t teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{t[0].WithGroup(name), t[1].WithGroup(name)}
}
