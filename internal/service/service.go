// Package service is the runtime shared by the tunnel's binaries: the
// command line (urfave/cli, every flag also an environment variable and a
// key of the --config YAML file), logging set-up, signal handling, and
// listening sockets with errors that say what to do.
//
// A setting's value comes from the first of these that has it: the command
// line, the environment variable, the --config file, the flag's default.
// (This is urfave/cli's altsrc rule: a file value is applied only to flags
// not set on the command line and whose environment variable is unset.)
//
// Exit status: 0 after a clean stop (including SIGINT or SIGTERM), 1 when
// the service fails while running (or a subcommand fails), 2 for a usage
// or settings error: an unknown flag, a bad or missing value (a
// *SettingError or *UsageError from App.Run or a subcommand).
//
// Every binary answers --version (see Version) and has the subcommand
// "check-config FILE", which checks a --config file and exits 0 if the
// service would accept it, 1 if not; "help COMMAND" explains a subcommand,
// and subcommands take --config too.
package service

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

// App describes one service binary.
type App struct {
	// Name is the binary's name; upper-cased with "-" made "_" it prefixes
	// the common flags' environment variables (NAME_LOG_LEVEL).
	Name, Usage, Description string
	// Flags are the service's own flags. Each must be an altsrc flag
	// (altsrc.NewStringFlag(&cli.StringFlag{...})) with EnvVars set, so it
	// can be given on the command line, in the environment or in --config;
	// Main refuses to run otherwise. Required flags may be satisfied by any
	// of the three and are checked only when the service itself runs (not
	// for subcommands). Main modifies the flags: build a new App per call.
	Flags []cli.Flag
	// Commands are optional subcommands. They see the service's flags
	// (including values from --config, given before or after the command's
	// name) through c.String and friends; their own flags are command-line
	// and environment only. An error from a command's Action exits 1, a
	// usage error (or a *SettingError or *UsageError) 2.
	Commands []*cli.Command
	// Run runs the service until ctx ends (SIGINT or SIGTERM) and returns
	// nil, or ctx's error, after a clean stop. log is the service's logger
	// (stderr, --log-format, --log-level). A *SettingError or *UsageError
	// (a value the user gave cannot work) exits 2, other errors 1.
	Run func(ctx context.Context, c *cli.Context, log *slog.Logger) error
	// Check, if set, checks the settings further without opening anything
	// (no socket, no file): "NAME check-config FILE" runs it after the
	// checks every service has. A *SettingError names the setting.
	Check func(c *cli.Context) error
	// ListenFlags name (without dashes) the flags holding an address to
	// listen on, HOST:PORT; HostFlags those holding a host to listen on. A
	// malformed value exits 2 naming the flag, before Run (and fails
	// check-config); one that cannot be bound is Run's failure (exit 1).
	ListenFlags, HostFlags []string
	// Procs is the default of --procs: how many cores the service's Go
	// code runs on at once (GOMAXPROCS). 0 leaves Go's default (all the
	// cores it may use), as does a GOMAXPROCS environment variable when
	// --procs is not given.
	Procs int
}

// Main runs app with args (os.Args) and returns the process exit code:
//
//	func main() { os.Exit(service.Main(app, os.Args)) }
//
// It adds the common flags --config, --log-format and --log-level, sets up
// the logger on stderr, and runs app.Run with a context cancelled by
// SIGINT or SIGTERM (a second signal kills the process the default way).
// Errors are printed to stderr as one line prefixed with the app's name.
func Main(app App, args []string) int {
	return MainContext(context.Background(), app, args, os.Stderr)
}

// MainContext is Main with a parent context (cancelling it stops the
// service like a signal) and the stream logs and errors go to.
func MainContext(ctx context.Context, app App, args []string, stderr io.Writer) int {
	return run(ctx, app, args, os.Stdout, stderr)
}

// exitCode is an error with the exit status Main should return.
type exitCode struct {
	code int
	err  error
}

func (e *exitCode) Error() string { return e.err.Error() }
func (e *exitCode) Unwrap() error { return e.err }

// envPrefix is the prefix of the common flags' environment variables.
func envPrefix(name string) string {
	return strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_"
}

// commonFlags returns --config, --log-format, --log-level and --procs.
func commonFlags(prefix string, procs int) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", EnvVars: []string{prefix + "CONFIG"}, TakesFile: true,
			Usage: "YAML `FILE` of settings; keys are the long flag names (e.g. log-level: debug)"},
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-format", Value: FormatText, EnvVars: []string{prefix + "LOG_FORMAT"},
			Usage: "log format: text or json"}),
		altsrc.NewStringFlag(&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{prefix + "LOG_LEVEL"},
			Usage: "log level: debug, info, warn or error"}),
		altsrc.NewIntFlag(&cli.IntFlag{Name: "procs", Value: procs, EnvVars: []string{prefix + "PROCS"},
			Usage: "how many CPU cores the service runs on at once (GOMAXPROCS); 0: all of them"}),
	}
}

func run(ctx context.Context, app App, args []string, stdout, stderr io.Writer) int {
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "%s: %s\n", app.Name, oneLine(err.Error()))
		return code
	}
	if err := checkFlags(app.Flags); err != nil {
		return fail(2, err)
	}
	required := takeRequired(app.Flags)
	flags := append(commonFlags(envPrefix(app.Name), app.Procs), app.Flags...)
	usageError := func(c *cli.Context, err error, _ bool) error {
		return fmt.Errorf("%w (see %s --help)", err, app.Name)
	}
	for _, cmd := range app.Commands {
		if cmd.OnUsageError == nil {
			cmd.OnUsageError = usageError
		}
		addConfigFlag(cmd, flags)
		if action := cmd.Action; action != nil {
			cmd.Action = func(c *cli.Context) error {
				if err := action(c); err != nil {
					return &exitCode{code: failCode(err), err: err}
				}
				return nil
			}
		}
	}
	check := checkConfigCommand(app, flags, required)
	check.OnUsageError = usageError
	commands := append(slices.Clone(app.Commands), check)
	a := &cli.App{
		Name:           app.Name,
		Usage:          app.Usage,
		Description:    app.Description,
		Flags:          flags,
		Commands:       commands,
		Writer:         stdout,
		ErrWriter:      stderr,
		Version:        Version(),
		OnUsageError:   usageError,
		ExitErrHandler: func(*cli.Context, error) {}, // run prints and picks the code
		Before: func(c *cli.Context) error {
			if path := c.String("config"); path != "" && c.Args().First() != checkConfigName {
				return loadConfig(c, path, flags) // check-config reads its own file
			}
			return nil
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return fmt.Errorf("unexpected argument %q (see %s --help)", c.Args().First(), app.Name)
			}
			if app.Run == nil {
				return cli.ShowAppHelp(c)
			}
			if err := checkRequired(c, required, app.Flags); err != nil {
				return err
			}
			if err := setProcs(c); err != nil {
				return err
			}
			out := newBatchWriter(stderr)
			defer out.Close() // flushes the last lines before Main prints or returns
			log, err := NewLogger(out, c.String("log-format"), c.String("log-level"))
			if err != nil {
				return err
			}
			if err := checkAddrs(c, app); err != nil {
				return err
			}
			if err := runService(c, app.Run, log); err != nil {
				return &exitCode{code: failCode(err), err: err}
			}
			return nil
		},
	}
	if err := a.RunContext(ctx, args); err != nil {
		if ec, ok := errors.AsType[*exitCode](err); ok {
			return fail(ec.code, ec.err)
		}
		return fail(2, err)
	}
	return 0
}

// failCode is the exit status for an error from App.Run or a subcommand:
// 2 when the user gave something that cannot work, 1 when running failed.
func failCode(err error) int {
	if _, ok := errors.AsType[*SettingError](err); ok {
		return 2
	}
	if _, ok := errors.AsType[*UsageError](err); ok {
		return 2
	}
	return 1
}

// addConfigFlag gives cmd a --config flag of its own, so the file can
// follow the command's name ("localproxy status --config F"): it is
// applied to the service's flags like the one given before the name.
func addConfigFlag(cmd *cli.Command, flags []cli.Flag) {
	for _, f := range cmd.Flags {
		if slices.Contains(f.Names(), "config") {
			return
		}
	}
	cmd.Flags = append(cmd.Flags, &cli.StringFlag{Name: "config", TakesFile: true,
		Usage: "YAML `FILE` of the service's settings, as for the service itself"})
	before := cmd.Before
	cmd.Before = func(c *cli.Context) error {
		// c.String finds this command's own flag first: set only when
		// given after the command's name.
		if path := c.String("config"); path != "" {
			if err := loadConfig(c.Lineage()[1], path, flags); err != nil {
				return err
			}
		}
		if before != nil {
			return before(c)
		}
		return nil
	}
}

// HalfTheCores is half the cores Go would use (GOMAXPROCS's default, which
// follows CPU affinity and cgroup limits), at least one: a default for
// --procs that leaves the rest of a small machine to the browser, the
// exposed apps and the other tunnel end, and still lets a big one spread a
// tunnel's stages (socket reads, packet processing, copies) over cores.
func HalfTheCores() int {
	return max(1, runtime.GOMAXPROCS(0)/2)
}

// setProcs applies --procs.
func setProcs(c *cli.Context) error {
	n := c.Int("procs")
	switch {
	case n < 0:
		return fmt.Errorf("--procs must be 0 (all cores) or more, got %d", n)
	case !c.IsSet("procs") && os.Getenv("GOMAXPROCS") != "":
		// The environment says; Go has applied it.
	case n > 0:
		runtime.GOMAXPROCS(n)
	case c.IsSet("procs"):
		runtime.SetDefaultGOMAXPROCS() // 0 given: all cores, whatever GOMAXPROCS says
	}
	return nil
}

// oneLine joins the lines of a multi-line message (some yaml and
// urfave/cli errors have them) so every error is printed as one line.
func oneLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return strings.Join(lines, " ")
}

// runService runs fn under a context cancelled by SIGINT or SIGTERM. After
// the first signal the handlers are removed, so a second one ends the
// process even if the service is slow to stop. A context error from fn
// after the context ended is a clean stop.
func runService(c *cli.Context, fn func(context.Context, *cli.Context, *slog.Logger) error, log *slog.Logger) error {
	parent := c.Context
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan struct{})
	unhook := context.AfterFunc(ctx, func() {
		defer close(done)
		stop()
		if parent.Err() == nil {
			log.Info("stopping", "cause", context.Cause(ctx).Error())
		}
	})
	defer func() {
		if !unhook() {
			<-done // the AfterFunc has started: wait for it
		}
	}()
	err := fn(ctx, c, log)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// LoadRoots reads a PEM file of CA certificates (a --ca flag); an empty
// path means the system's roots (nil).
func LoadRoots(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, &SettingError{Setting: "--ca", Value: path, Reason: readReason(err)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, &SettingError{Setting: "--ca", Value: path, Reason: "no PEM certificate found"}
	}
	return pool, nil
}

// checkAddrs checks the values of app.ListenFlags and app.HostFlags.
func checkAddrs(c *cli.Context, app App) error {
	for _, f := range app.ListenFlags {
		if v := c.String(f); v != "" {
			if err := CheckListenAddr("--"+f, v); err != nil {
				return err
			}
		}
	}
	for _, f := range app.HostFlags {
		if err := CheckHost("--"+f, c.String(f)); err != nil {
			return err
		}
	}
	return nil
}
