// Command demoapp is a small REST service for the demo and the tests: it
// answers every request with what it received (method, path, query,
// headers as sent, body length and sha256, remote address, host) as JSON,
// streams deterministic bytes at /bytes?n=N, server-sent events at
// /sse?n=N&interval=D, echoes websocket messages at /ws and answers
// /healthz. See package quictunnel/internal/demoapp.
//
//	demoapp --listen 127.0.0.1:3000
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"quictunnel/internal/demoapp"
	"quictunnel/internal/service"
)

func main() {
	os.Exit(service.Main(service.App{
		Name:  "demoapp",
		Usage: "demo local app: echoes what it receives",
		Description: "Any request gets a JSON echo of itself. GET /bytes?n=N streams N deterministic bytes,\n" +
			"GET /sse?n=N&interval=100ms sends N server-sent events, GET /ws echoes websocket messages,\n" +
			"GET /healthz answers ok.",
		Flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "listen", Value: "127.0.0.1:3000", EnvVars: []string{"DEMOAPP_LISTEN"},
				Usage: "TCP `ADDRESS` to serve HTTP on"}),
		},
		ListenFlags: []string{"listen"},
		Run:         run,
	}, os.Args))
}

func run(ctx context.Context, c *cli.Context, log *slog.Logger) error {
	ln, err := service.ListenTCP(c.String("listen"))
	if err != nil {
		return err
	}
	log.Info("demo app ready", "listen", ln.Addr().String())
	return demoapp.Serve(ctx, ln, log)
}
