package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// settings is what a test app's Run saw.
type settings struct {
	listen  string
	timeout time.Duration
	verbose bool
	token   string
	ran     bool
}

func testFlags() []cli.Flag {
	return []cli.Flag{
		altsrc.NewStringFlag(&cli.StringFlag{Name: "listen", Value: "default", EnvVars: []string{"SVC_LISTEN"}, Usage: "address"}),
		altsrc.NewDurationFlag(&cli.DurationFlag{Name: "timeout", Value: time.Second, EnvVars: []string{"SVC_TIMEOUT"}, Usage: "how long"}),
		altsrc.NewBoolFlag(&cli.BoolFlag{Name: "verbose", EnvVars: []string{"SVC_VERBOSE"}, Usage: "say more"}),
	}
}

func testApp(got *settings) App {
	return App{
		Name:  "svc",
		Usage: "a test service",
		Flags: testFlags(),
		Run: func(_ context.Context, c *cli.Context, _ *slog.Logger) error {
			*got = settings{listen: c.String("listen"), timeout: c.Duration("timeout"), verbose: c.Bool("verbose"),
				token: c.String("token"), ran: true}
			return nil
		},
	}
}

// runApp runs app with args ("svc" is prepended) and returns the exit
// code, stdout and stderr.
func runApp(t *testing.T, app App, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), app, append([]string{"svc"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "svc.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestPrecedence pins urfave/cli's rule: flag, then environment, then
// --config file, then default.
func TestPrecedence(t *testing.T) {
	cfg := writeConfig(t, "listen: from-config\ntimeout: 7s\nverbose: true\n")
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want settings
	}{
		{"defaults", nil, nil, settings{listen: "default", timeout: time.Second}},
		{"config", []string{"--config", cfg}, nil, settings{listen: "from-config", timeout: 7 * time.Second, verbose: true}},
		{"config named by env", nil, map[string]string{"SVC_CONFIG": cfg}, settings{listen: "from-config", timeout: 7 * time.Second, verbose: true}},
		{"env beats config", []string{"--config", cfg}, map[string]string{"SVC_LISTEN": "from-env", "SVC_TIMEOUT": "3s"},
			settings{listen: "from-env", timeout: 3 * time.Second, verbose: true}},
		{"flag beats config", []string{"--config", cfg, "--timeout", "2s"}, nil,
			settings{listen: "from-config", timeout: 2 * time.Second, verbose: true}},
		{"flag beats env", []string{"--config", cfg, "--listen", "from-flag"}, map[string]string{"SVC_LISTEN": "from-env"},
			settings{listen: "from-flag", timeout: 7 * time.Second, verbose: true}},
		{"env without config", nil, map[string]string{"SVC_LISTEN": "from-env", "SVC_VERBOSE": "true"},
			settings{listen: "from-env", timeout: time.Second, verbose: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var got settings
			code, _, stderr := runApp(t, testApp(&got), tt.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			tt.want.ran = true
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestBadSettings(t *testing.T) {
	cfg := func(text string) string { return writeConfig(t, text) }
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // substrings of the one-line message
	}{
		{"log format", []string{"--log-format", "xml"}, nil, []string{`--log-format "xml"`, "text or json"}},
		{"log level", []string{"--log-level", "loud"}, nil, []string{`--log-level "loud"`, "debug, info, warn or error"}},
		{"log level from env", nil, map[string]string{"SVC_LOG_LEVEL": "trace"}, []string{`--log-level "trace"`}},
		{"log level from config", []string{"--config", cfg("log-level: verbose\n")}, nil, []string{`--log-level "verbose"`}},
		{"missing config", []string{"--config", "/nonexistent/svc.yaml"}, nil, []string{"--config", "no such file"}},
		{"unknown config key", []string{"--config", cfg("listn: x\n")}, nil, []string{"unknown key(s) listn", "listen"}},
		{"config not a mapping", []string{"--config", cfg("- a\n- b\n")}, nil, []string{"--config", "YAML mapping"}},
		{"config wrong type", []string{"--config", cfg("timeout: [1]\n")}, nil, []string{"--config", "timeout"}},
		{"bad duration in env", nil, map[string]string{"SVC_TIMEOUT": "soon"}, []string{"soon"}},
		{"unknown flag", []string{"--no-such-flag"}, nil, []string{"no-such-flag", "svc --help"}},
		{"extra argument", []string{"stray"}, nil, []string{`unexpected argument "stray"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var got settings
			code, stdout, stderr := runApp(t, testApp(&got), tt.args...)
			if code != 2 || got.ran {
				t.Fatalf("exit %d, ran %v; want 2 without running", code, got.ran)
			}
			if !strings.HasPrefix(stderr, "svc: ") || strings.Count(stderr, "\n") != 1 || stdout != "" {
				t.Fatalf("want one line on stderr and nothing on stdout; got stderr %q stdout %q", stderr, stdout)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
		})
	}
}

// TestRequired checks that a required flag may come from any source, and
// that subcommands do not need the service's required settings.
func TestRequired(t *testing.T) {
	newApp := func(got *settings) App {
		app := testApp(got)
		app.Flags = append(app.Flags, altsrc.NewStringFlag(&cli.StringFlag{Name: "token", Required: true,
			EnvVars: []string{"SVC_TOKEN"}, Usage: "secret"}))
		app.Commands = []*cli.Command{{Name: "status", Action: func(c *cli.Context) error {
			*got = settings{listen: c.String("listen"), ran: true}
			return nil
		}}}
		return app
	}
	tests := []struct {
		name      string
		args      []string
		env       string
		wantCode  int
		wantToken string
	}{
		{"flag", []string{"--token", "t1"}, "", 0, "t1"},
		{"env", nil, "t2", 0, "t2"},
		{"config", []string{"--config", writeConfig(t, "token: t3\n")}, "", 0, "t3"},
		{"missing", nil, "", 2, ""},
		{"subcommand", []string{"--listen", "sub", "status"}, "", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("SVC_TOKEN", tt.env)
			}
			var got settings
			code, _, stderr := runApp(t, newApp(&got), tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d: %s", code, tt.wantCode, stderr)
			}
			if code == 2 {
				if got.ran || !strings.Contains(stderr, "--token: required") || !strings.Contains(stderr, "$SVC_TOKEN") {
					t.Fatalf("ran %v, stderr %q", got.ran, stderr)
				}
				return
			}
			if !got.ran || got.token != tt.wantToken {
				t.Fatalf("got %+v, want token %q", got, tt.wantToken)
			}
		})
	}
}

func TestFlagsMustBeSettableThreeWays(t *testing.T) {
	for name, f := range map[string]cli.Flag{
		"plain flag":  &cli.StringFlag{Name: "plain", EnvVars: []string{"SVC_PLAIN"}},
		"no env vars": altsrc.NewStringFlag(&cli.StringFlag{Name: "noenv"}),
	} {
		t.Run(name, func(t *testing.T) {
			var got settings
			app := testApp(&got)
			app.Flags = append(app.Flags, f)
			code, _, stderr := runApp(t, app)
			if code != 2 || got.ran || !strings.Contains(stderr, "--"+f.Names()[0]) {
				t.Fatalf("exit %d, ran %v, stderr %q", code, got.ran, stderr)
			}
		})
	}
}

func TestHelpShowsEveryFlagDefaultAndEnv(t *testing.T) {
	var got settings
	code, stdout, stderr := runApp(t, testApp(&got), "--help")
	if code != 0 || got.ran {
		t.Fatalf("exit %d, ran %v: %s", code, got.ran, stderr)
	}
	for _, w := range []string{
		"--config FILE", "$SVC_CONFIG",
		"--log-format value", `(default: "text")`, "$SVC_LOG_FORMAT",
		"--log-level value", `(default: "info")`, "$SVC_LOG_LEVEL",
		"--listen value", `(default: "default")`, "$SVC_LISTEN",
		"--timeout value", "(default: 1s)", "$SVC_TIMEOUT",
		"--verbose", "(default: false)", "$SVC_VERBOSE",
	} {
		if !strings.Contains(stdout, w) {
			t.Errorf("help lacks %q:\n%s", w, stdout)
		}
	}
}

func TestSubcommandErrors(t *testing.T) {
	var got settings
	app := testApp(&got)
	app.Commands = []*cli.Command{{Name: "status", Flags: []cli.Flag{&cli.BoolFlag{Name: "brief"}},
		Action: func(c *cli.Context) error { return errors.New("service not running") }}}
	if code, _, stderr := runApp(t, app, "status"); code != 1 || stderr != "svc: service not running\n" {
		t.Errorf("failing subcommand: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runApp(t, app, "status", "--nope"); code != 2 || !strings.Contains(stderr, "nope") {
		t.Errorf("misused subcommand: exit %d, stderr %q", code, stderr)
	}
	if got.ran {
		t.Error("the service ran for a subcommand")
	}
}

func TestRunErrorExitsOne(t *testing.T) {
	app := App{Name: "svc", Flags: testFlags(), Run: func(context.Context, *cli.Context, *slog.Logger) error {
		return fmt.Errorf("open store: %w", os.ErrNotExist)
	}}
	code, _, stderr := runApp(t, app)
	if code != 1 || stderr != "svc: open store: file does not exist\n" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// TestSettingErrorsFromRunExitTwo checks a value the service refuses
// exits 2, named as the flag (FieldFlags maps a package's field to it).
func TestSettingErrorsFromRunExitTwo(t *testing.T) {
	fields := FieldFlags{"Listen": "listen"}
	for _, tt := range []struct {
		err    error
		stderr string
	}{
		{&SettingError{Setting: "--listen", Value: "x", Reason: "want host:port"}, "svc: --listen \"x\": want host:port\n"},
		{Usage(errors.New("--listen: no such host")), "svc: --listen: no such host\n"},
		{fields.Setting("Listen", "want host:port", errors.New("svc: Listen: want host:port")), "svc: --listen: want host:port\n"},
		{fields.Setting("Other", "bad", errors.New("pkg: config Other: bad")), "svc: pkg: config Other: bad\n"},
	} {
		app := App{Name: "svc", Flags: testFlags(), Run: func(context.Context, *cli.Context, *slog.Logger) error { return tt.err }}
		if code, _, stderr := runApp(t, app); code != 2 || stderr != tt.stderr {
			t.Errorf("%v: exit %d, stderr %q; want 2, %q", tt.err, code, stderr, tt.stderr)
		}
	}
}

// TestSubcommandConfig checks --config after a subcommand's name sets the
// service's flags, as before it.
func TestSubcommandConfig(t *testing.T) {
	cfg := writeConfig(t, "listen: from-config\n")
	for _, args := range [][]string{{"--config", cfg, "status"}, {"status", "--config", cfg}} {
		var listen string
		app := testApp(&settings{})
		app.Commands = []*cli.Command{{Name: "status", Action: func(c *cli.Context) error {
			listen = c.String("listen")
			return nil
		}}}
		if code, _, stderr := runApp(t, app, args...); code != 0 || listen != "from-config" {
			t.Errorf("%q: exit %d (%s), listen %q", args, code, stderr, listen)
		}
	}
	app := testApp(&settings{})
	app.Commands = []*cli.Command{{Name: "status", Usage: "show the state", Action: func(*cli.Context) error { return nil }}}
	if code, stdout, _ := runApp(t, app, "help", "status"); code != 0 || !strings.Contains(stdout, "show the state") || !strings.Contains(stdout, "--config") {
		t.Errorf("help status: exit %d, %q", code, stdout)
	}
	if code, stdout, _ := runApp(t, app, "--version"); code != 0 || !strings.HasPrefix(stdout, "svc version ") || !strings.Contains(stdout, " commit ") {
		t.Errorf("--version: exit %d, %q", code, stdout)
	}
}

// TestSignalStops sends SIGTERM to the test process while Run waits: the
// signal is diverted to Run's context, which ends with the signal as cause,
// and a service that then returns ctx.Err() exits 0.
func TestSignalStops(t *testing.T) {
	var cause error
	app := App{Name: "svc", Flags: testFlags(), Run: func(ctx context.Context, _ *cli.Context, log *slog.Logger) error {
		// Run is called after the handler is installed, so the signal
		// cannot reach the default action (which would kill the test).
		if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			cause = context.Cause(ctx)
			return ctx.Err()
		case <-time.After(30 * time.Second):
			return errors.New("SIGTERM did not cancel the context")
		}
	}}
	code, _, stderr := runApp(t, app)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if cause == nil || !strings.Contains(cause.Error(), "terminated") {
		t.Fatalf("cause %v", cause)
	}
	if !strings.Contains(stderr, "msg=stopping") || !strings.Contains(stderr, "terminated") {
		t.Fatalf("stderr %q", stderr)
	}
}

func TestParentContextStops(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	app := App{Name: "svc", Flags: testFlags(), Run: func(ctx context.Context, _ *cli.Context, _ *slog.Logger) error {
		cancel()
		<-ctx.Done()
		return fmt.Errorf("serve: %w", ctx.Err())
	}}
	var stderr bytes.Buffer
	if code := MainContext(ctx, app, []string{"svc"}, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		format, level string
		want          []string // substrings of the output of Debug("d") then Warn("w", "k", 1)
		wantNot       string
	}{
		{"text", "info", []string{"level=WARN msg=w k=1"}, "msg=d"},
		{"text", "DEBUG", []string{"level=DEBUG msg=d", "level=WARN"}, ""},
		{"json", "warn", []string{`"level":"WARN","msg":"w","k":1`}, `"msg":"d"`},
		{"JSON", "error", nil, `"msg":"w"`},
	}
	for _, tt := range tests {
		t.Run(tt.format+"/"+tt.level, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := NewLogger(&buf, tt.format, tt.level)
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("d")
			log.Warn("w", "k", 1)
			for _, w := range tt.want {
				if !strings.Contains(buf.String(), w) {
					t.Errorf("output %q lacks %q", buf.String(), w)
				}
			}
			if tt.wantNot != "" && strings.Contains(buf.String(), tt.wantNot) {
				t.Errorf("output %q has %q", buf.String(), tt.wantNot)
			}
		})
	}
	for _, bad := range [][2]string{{"xml", "info"}, {"text", "warning"}, {"", "info"}, {"text", "debug+1"}} {
		_, err := NewLogger(&bytes.Buffer{}, bad[0], bad[1])
		if se, ok := errors.AsType[*SettingError](err); !ok || !strings.HasPrefix(se.Setting, "--log-") {
			t.Errorf("NewLogger(%q, %q) = %v, want a *SettingError", bad[0], bad[1], err)
		}
	}
}

func TestListenErrorsSayWhatToDo(t *testing.T) {
	pc, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err = ListenUDP(pc.LocalAddr().String()); err == nil || !strings.Contains(err.Error(), "port in use") ||
		!errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("ListenUDP on a busy port = %v", err)
	}
	ln, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err = ListenTCP(ln.Addr().String()); err == nil || !strings.Contains(err.Error(), "port in use") {
		t.Fatalf("ListenTCP on a busy port = %v", err)
	}
}

func TestAccessLog(t *testing.T) {
	var stderr bytes.Buffer
	log, _ := NewLogger(&stderr, "text", "info")
	path := filepath.Join(t.TempDir(), "access.log")
	acc, closeFn, err := AccessLogger(log, path, "json")
	if err != nil {
		t.Fatal(err)
	}
	acc.Info("request", "target", "example.test:443")
	closeFn()
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"target":"example.test:443"`) || !strings.Contains(stderr.String(), "target=example.test:443") {
		t.Fatalf("file %q stderr %q", b, stderr.String())
	}

	same, closeFn, err := AccessLogger(log, "", "json")
	if err != nil || same != log {
		t.Fatalf("AccessLogger without a path = %v, %v; want log itself", same, err)
	}
	closeFn()

	bad := filepath.Join(t.TempDir(), "bad.log")
	if _, _, err := OpenAccessLog(bad, "xml"); err == nil {
		t.Fatal("OpenAccessLog with format xml succeeded")
	}
	if _, err := os.Stat(bad); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a bad format left a file behind: %v", err)
	}
	if _, _, err := OpenAccessLog(filepath.Join(t.TempDir(), "no", "dir.log"), "text"); err == nil ||
		!strings.HasPrefix(err.Error(), "--access-log") {
		t.Fatalf("OpenAccessLog in a missing dir = %v", err)
	}
}

// FuzzConfigFile feeds arbitrary --config files to a service: it runs
// (exit 0) or refuses with a usage error (exit 2) naming the file, and
// never panics or half-applies a file it refused.
func FuzzConfigFile(f *testing.F) {
	for _, seed := range []string{
		"listen: from-config\ntimeout: 7s\nverbose: true\n",
		"listen: [1, 2]\n", "timeout: forever\n", "unknown: 1\n", "listen: &a x\nverbose: *a\n", "", "\t:\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "svc.yaml")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		var got settings
		code, _, stderr := runApp(t, testApp(&got), "--config", path)
		switch code {
		case 0:
			if !got.ran {
				t.Fatalf("exit 0 without running")
			}
		case 1, 2:
			if got.ran {
				t.Fatalf("ran although the config was refused: %s", stderr)
			}
			if !strings.Contains(stderr, "svc:") {
				t.Fatalf("refusal without the service's name: %q", stderr)
			}
		default:
			t.Fatalf("exit %d: %s", code, stderr)
		}
	})
}

func TestProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	tests := []struct {
		name     string
		defaults int
		args     []string
		env      map[string]string
		want     int // -1: untouched; -2: Go's default without GOMAXPROCS
		wantCode int
	}{
		{name: "app default", defaults: 1, want: 1},
		{name: "flag beats default", defaults: 1, args: []string{"--procs", "3"}, want: 3},
		{name: "environment", defaults: 1, env: map[string]string{"SVC_PROCS": "2"}, want: 2},
		{name: "GOMAXPROCS wins over the default", defaults: 1, env: map[string]string{"GOMAXPROCS": "5"}, want: -1},
		{name: "no default", want: -1},
		{name: "0 is all cores, whatever GOMAXPROCS says", defaults: 1, args: []string{"--procs", "0"},
			env: map[string]string{"GOMAXPROCS": "5"}, want: -2},
		{name: "negative", args: []string{"--procs", "-1"}, wantCode: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			runtime.SetDefaultGOMAXPROCS()
			all := runtime.GOMAXPROCS(0)
			const sentinel = 7 // what GOMAXPROCS is when the app leaves it alone
			runtime.GOMAXPROCS(sentinel)
			var got int
			app := App{Name: "svc", Procs: tt.defaults, Run: func(context.Context, *cli.Context, *slog.Logger) error {
				got = runtime.GOMAXPROCS(0)
				return nil
			}}
			code, _, stderr := runApp(t, app, tt.args...)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d: %s", code, tt.wantCode, stderr)
			}
			if code != 0 {
				if !strings.Contains(stderr, "--procs") {
					t.Errorf("error %q does not name --procs", stderr)
				}
				return
			}
			want := tt.want
			switch want {
			case -1:
				want = sentinel
			case -2:
				want = all
			}
			if got != want {
				t.Errorf("GOMAXPROCS = %d, want %d", got, want)
			}
		})
	}
}

// TestQlogDir: --qlog-dir makes the directory (private) and returns its
// absolute path; a path it cannot make is an error naming the flag.
func TestQlogDir(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		want    string // "" with wantErr false: unset
		wantErr bool
	}{
		{name: "unset"},
		{name: "made", args: []string{"--qlog-dir", filepath.Join(base, "a", "b")}, want: filepath.Join(base, "a", "b")},
		{name: "under a file", args: []string{"--qlog-dir", filepath.Join(file, "x")}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got string
			var err error
			app := App{Name: "svc", Flags: []cli.Flag{QlogDirFlag("SVC_")}, Run: func(_ context.Context, c *cli.Context, log *slog.Logger) error {
				got, err = QlogDir(c, log)
				return nil
			}}
			if code, _, stderr := runApp(t, app, tt.args...); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			switch {
			case tt.wantErr:
				if err == nil || !strings.Contains(err.Error(), "--qlog-dir") {
					t.Fatalf("QlogDir = %q, %v; want an error naming --qlog-dir", got, err)
				}
			case err != nil || got != tt.want:
				t.Fatalf("QlogDir = %q, %v; want %q", got, err, tt.want)
			case got != "":
				if fi, err := os.Stat(got); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
					t.Fatalf("%s: %v, %v; want a directory with mode 0700", got, fi.Mode(), err)
				}
			}
		})
	}
}

// TestCheckConfig checks "svc check-config FILE": 0 and "FILE: ok" for a
// file the service would accept, 1 and one line naming the setting for one
// it would refuse, without running the service.
func TestCheckConfig(t *testing.T) {
	cfg := func(text string) string { return writeConfig(t, text) }
	tests := []struct {
		name string
		args []string
		code int
		want []string // substrings of stdout (code 0) or of the one-line stderr
	}{
		{"good", []string{cfg("listen: x\ntimeout: 7s\nverbose: true\ntoken: t\n")}, 0, []string{"svc.yaml: ok"}},
		{"unknown key", []string{cfg("token: t\nlistn: x\n")}, 1, []string{"unknown key(s) listn", "listen"}},
		{"bad duration", []string{cfg("token: t\ntimeout: soon\n")}, 1, []string{"timeout"}},
		{"wrong type", []string{cfg("token: t\ntimeout: [1]\n")}, 1, []string{"timeout"}},
		{"not a mapping", []string{cfg("- a\n")}, 1, []string{"--config", "YAML mapping"}},
		{"missing file", []string{"/nonexistent/svc.yaml"}, 1, []string{"/nonexistent/svc.yaml", "no such file"}},
		{"required missing", []string{cfg("listen: x\n")}, 1, []string{"--token: required"}},
		{"log level", []string{cfg("token: t\nlog-level: loud\n")}, 1, []string{`--log-level "loud"`}},
		{"procs", []string{cfg("token: t\nprocs: -2\n")}, 1, []string{`--procs "-2"`}},
		{"app check", []string{cfg("token: t\nlisten: refused\n")}, 1, []string{`--listen "refused"`}},
		{"no file", nil, 2, []string{"check-config wants one FILE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got settings
			app := testApp(&got)
			app.Flags = append(app.Flags, altsrc.NewStringFlag(&cli.StringFlag{Name: "token", Required: true,
				EnvVars: []string{"SVC_TOKEN"}, Usage: "secret"}))
			app.Check = func(c *cli.Context) error {
				if l := c.String("listen"); l == "refused" {
					return &SettingError{Setting: "--listen", Value: l, Reason: "not an address"}
				}
				return nil
			}
			code, stdout, stderr := runApp(t, app, append([]string{"check-config"}, tt.args...)...)
			if code != tt.code || got.ran {
				t.Fatalf("exit %d (stderr %q), ran %v; want %d without running", code, stderr, got.ran, tt.code)
			}
			out := stdout
			if code != 0 {
				out = stderr
				if !strings.HasPrefix(stderr, "svc: ") || strings.Count(stderr, "\n") != 1 || stdout != "" {
					t.Fatalf("want one line on stderr and nothing on stdout; got stderr %q stdout %q", stderr, stdout)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %q lacks %q", out, w)
				}
			}
		})
	}
	// A --config before the command is not read: check-config reads FILE.
	bad, good := cfg("listn: x\n"), cfg("listen: x\n")
	if code, stdout, stderr := runApp(t, testApp(&settings{}), "--config", bad, "check-config", good); code != 0 || stdout != good+": ok\n" {
		t.Errorf("--config BAD check-config GOOD: exit %d, %q %q; want 0 and ok", code, stdout, stderr)
	}
}
