package service_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"quictunnel/internal/service"
)

// A service binary is an App and a one-line main. Here the flag comes from
// the command line; GREETER_NAME or "name: ..." in --config would do too.
func ExampleMain() {
	app := service.App{
		Name:  "greeter",
		Usage: "greets",
		Flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "name", Value: "world", EnvVars: []string{"GREETER_NAME"},
				Usage: "whom to greet"}),
		},
		Run: func(ctx context.Context, c *cli.Context, log *slog.Logger) error {
			fmt.Println("hello,", c.String("name"))
			return nil
		},
	}
	// In main: os.Exit(service.Main(app, os.Args))
	code := service.Main(app, []string{"greeter", "--name", "gopher", "--log-level", "warn"})
	fmt.Println("exit status", code)
	// Output:
	// hello, gopher
	// exit status 0
}
