package service

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"
)

// checkConfigName is the subcommand every service has.
const checkConfigName = "check-config"

// checkConfigCommand returns "NAME check-config FILE": it reads FILE as
// --config would and checks what the service checks before it starts
// (keys, value types, required settings, the log and --procs settings,
// then app.Check), opening nothing else. It exits 0 with "FILE: ok" on
// stdout, or 1 with one line naming the setting that is wrong.
func checkConfigCommand(app App, flags []cli.Flag, required []string) *cli.Command {
	return &cli.Command{
		Name:      checkConfigName,
		Usage:     "check a --config file: its keys, their values and the required settings; exit 0 if the service would accept it, 1 if not",
		ArgsUsage: "FILE",
		Description: "Reads FILE as --config FILE would. Settings given on the command line before " + checkConfigName +
			" or in the environment win over the file's, as when the service starts.",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("%s wants one FILE, got %d arguments (see %s help %s)", checkConfigName, c.NArg(), app.Name, checkConfigName)
			}
			path := c.Args().First()
			svc := c.Lineage()[1]
			if err := checkConfig(svc, app, path, flags, required); err != nil {
				return &exitCode{code: 1, err: err}
			}
			_, err := fmt.Fprintf(c.App.Writer, "%s: ok\n", path)
			return err
		},
	}
}

// checkConfig applies the file at path to the service's context c and
// checks the settings as Main does before running the service.
func checkConfig(c *cli.Context, app App, path string, flags []cli.Flag, required []string) error {
	if err := loadConfig(c, path, flags); err != nil {
		return err
	}
	if err := checkRequired(c, required, app.Flags); err != nil {
		return err
	}
	if _, err := NewLogger(io.Discard, c.String("log-format"), c.String("log-level")); err != nil {
		return err
	}
	if n := c.Int("procs"); n < 0 {
		return &SettingError{Setting: "--procs", Value: fmt.Sprint(n), Reason: "want 0 (all cores) or more"}
	}
	if err := checkAddrs(c, app); err != nil {
		return err
	}
	if app.Check != nil {
		return app.Check(c)
	}
	return nil
}
