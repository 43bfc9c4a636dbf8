// Package service is the runtime shared by the tunnel's binaries: the
// command line (urfave/cli, every flag also an environment variable and a
// key of the --config YAML file), logging set-up, signal handling, and
// listening sockets with errors that say what to do.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

// App describes one service binary.
type App struct {
	Name, Usage, Description string
	// Flags are the service's own flags. Each should be an altsrc flag
	// (altsrc.NewStringFlag(&cli.StringFlag{...})) with EnvVars set, so it
	// can be given on the command line, in the environment or in --config.
	Flags []cli.Flag
	// Commands are optional subcommands.
	Commands []*cli.Command
	// Run runs the service until ctx ends (SIGINT or SIGTERM).
	Run func(ctx context.Context, c *cli.Context, log *slog.Logger) error
}

// Main runs app with args and returns the process exit code. Precedence
// of a setting: command line, then environment, then the --config file,
// then the flag's default.
func Main(app App, args []string) int {
	return MainContext(context.Background(), app, args, os.Stderr)
}

// MainContext is Main with a parent context and the stream logs go to.
func MainContext(ctx context.Context, app App, args []string, stderr io.Writer) int {
	prefix := strings.ToUpper(strings.ReplaceAll(app.Name, "-", "_")) + "_"
	common := []cli.Flag{
		&cli.StringFlag{Name: "config", EnvVars: []string{prefix + "CONFIG"},
			Usage: "YAML file of settings; keys are the long flag names (e.g. listen: 127.0.0.1:8118)"},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{prefix + "LOG_FORMAT"},
			Usage: "log format: text or json"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{prefix + "LOG_LEVEL"},
			Usage: "log level: debug, info, warn or error"}),
	}
	flags := append(common, app.Flags...)
	var exitErr error
	a := &cli.App{
		Name:        app.Name,
		Usage:       app.Usage,
		Description: app.Description,
		Flags:       flags,
		Commands:    app.Commands,
		Writer:      os.Stdout,
		ErrWriter:   stderr,
		Before: func(c *cli.Context) error {
			if c.String("config") == "" {
				return nil
			}
			if _, err := os.Stat(c.String("config")); err != nil {
				return fmt.Errorf("--config: %w", err)
			}
			return altsrc.InitInputSourceWithContext(flags, altsrc.NewYamlSourceFromFlagFunc("config"))(c)
		},
		Action: func(c *cli.Context) error {
			log, err := NewLogger(stderr, c.String("log-format"), c.String("log-level"))
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := app.Run(ctx, c, log); err != nil && !errors.Is(err, context.Canceled) {
				exitErr = err
				return err
			}
			return nil
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // we print and choose the code below
	}
	if err := a.RunContext(ctx, args); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", app.Name, err)
		if exitErr == nil {
			return 2 // usage or configuration error
		}
		return 1
	}
	return 0
}

// NewLogger returns a slog logger writing format ("text" or "json") at
// level ("debug", "info", "warn", "error") to w.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// AccessLogger returns the logger for request lines: log itself when path
// is empty, otherwise a logger that writes to both log's handler and the
// file at path (appended, in format). The returned func closes the file.
func AccessLogger(log *slog.Logger, path, format string) (*slog.Logger, func(), error) {
	if path == "" {
		return log, func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("--access-log: %w", err)
	}
	file, err := NewLogger(f, format, "info")
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return slog.New(teeHandler{log.Handler(), file.Handler()}), func() { f.Close() }, nil
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

// ListenUDP opens a UDP socket on addr (":port" listens on IPv4 and IPv6).
func ListenUDP(addr string) (*net.UDPConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("UDP address %q: %w", addr, err)
	}
	pc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, listenError("UDP", addr, err)
	}
	return pc, nil
}

// ListenTCP opens a TCP listener on addr.
func ListenTCP(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, listenError("TCP", addr, err)
	}
	return ln, nil
}

func listenError(proto, addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("listen on %s %s: port in use: another process (or another copy of this one) has it; choose another address: %w", proto, addr, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("listen on %s %s: permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE: %w", proto, addr, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("listen on %s %s: this machine has no such address: %w", proto, addr, err)
	}
	return fmt.Errorf("listen on %s %s: %w", proto, addr, err)
}
