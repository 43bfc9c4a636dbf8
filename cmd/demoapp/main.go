// Command demoapp is a small REST service for the demo and the tests: it
// answers every request with what it received (method, path, headers, body
// sha256), streams bytes at /bytes?n=N, server-sent events at /sse?n=N and
// echoes websocket messages at /ws.
package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"quictunnel/internal/demoapp"
	"quictunnel/internal/service"
)

func main() {
	os.Exit(service.Main(service.App{
		Name:  "demoapp",
		Usage: "demo local app: echoes what it receives",
		Flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "listen", Value: "127.0.0.1:3000", EnvVars: []string{"DEMOAPP_LISTEN"},
				Usage: "TCP address to serve HTTP on"}),
		},
		Run: run,
	}, os.Args))
}

func run(ctx context.Context, c *cli.Context, log *slog.Logger) error {
	ln, err := service.ListenTCP(c.String("listen"))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: demoapp.Handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Info("demo app ready", "listen", ln.Addr())
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
