// Command reporter is the STUN server that tells localproxy its public
// IP:port, and keeps the NAT mappings of clients that ask for it open by
// pinging them every NAT_KEEP_ALIVE_INTERVAL milliseconds.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"quictunnel/internal/metrics"
	"quictunnel/internal/service"
	"quictunnel/natt"
)

func main() {
	os.Exit(service.Main(service.App{
		Name:  "reporter",
		Usage: "STUN server reporting clients' public IP:port, with NAT keepalive",
		Flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "listen", Value: ":3478", EnvVars: []string{"REPORTER_LISTEN"},
				Usage: "UDP address to serve STUN on (\":port\" serves IPv4 and IPv6)"}),
			altsrc.NewInt64Flag(&cli.Int64Flag{Name: "keepalive-interval", Value: 15000, EnvVars: []string{"REPORTER_KEEPALIVE_INTERVAL", "NAT_KEEP_ALIVE_INTERVAL"},
				Usage: "milliseconds between keepalive pings to clients that asked for them; keep it below the NAT's UDP timeout"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "probe-listen", EnvVars: []string{"REPORTER_PROBE_LISTEN"},
				Usage: "second UDP address (another port, same IP) that answers RFC 5780 change-port requests, so clients can measure their NAT's filtering (e.g. :3479)"}),
			altsrc.NewIntFlag(&cli.IntFlag{Name: "keepalive-misses", Value: 3, EnvVars: []string{"REPORTER_KEEPALIVE_MISSES"},
				Usage: "stop pinging a client after this many unanswered pings in a row"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"REPORTER_METRICS_LISTEN"},
				Usage: "serve Prometheus metrics at /metrics and a health check at /healthz on this TCP address (e.g. 127.0.0.1:9101)"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "pprof", EnvVars: []string{"REPORTER_PPROF"},
				Usage: "also serve Go profiling at /debug/pprof/ on --metrics-listen"}),
		},
		Check:       checkSettings,
		ListenFlags: []string{"listen", "probe-listen", "metrics-listen"},
		Run:         run,
	}, os.Args))
}

func run(ctx context.Context, c *cli.Context, log *slog.Logger) error {
	interval := c.Int64("keepalive-interval")
	if interval <= 0 {
		return &service.SettingError{Setting: "--keepalive-interval", Value: strconv.FormatInt(interval, 10),
			Reason: "must be a positive number of milliseconds (also $NAT_KEEP_ALIVE_INTERVAL)"}
	}
	srv, err := natt.NewServer(natt.ServerConfig{
		KeepAliveInterval: time.Duration(interval) * time.Millisecond,
		MaxMisses:         c.Int("keepalive-misses"),
		Logger:            log,
	})
	if e, ok := errors.AsType[*natt.ConfigError](err); ok {
		return service.FieldFlags{"KeepAliveInterval": "keepalive-interval", "MaxMisses": "keepalive-misses"}.Setting(e.Field, e.Reason, err)
	}
	if err != nil {
		return err
	}
	pc, err := service.ListenUDP(c.String("listen"))
	if err != nil {
		return err
	}
	defer pc.Close()
	summary := []any{"listen", pc.LocalAddr(), "keepalive_interval", time.Duration(interval) * time.Millisecond}
	var probe *net.UDPConn
	if a := c.String("probe-listen"); a != "" {
		if probe, err = service.ListenUDP(a); err != nil {
			return fmt.Errorf("--probe-listen: %w", err)
		}
		defer probe.Close()
		summary = append(summary, "probe", probe.LocalAddr())
	}
	log.Info("reporter ready", summary...)
	return metrics.RunWith(ctx, c.String("metrics-listen"), c.Bool("pprof"), log, func(r *metrics.Registry) { r.AddReporter(srv) },
		func(ctx context.Context) error {
			if probe == nil {
				return srv.Serve(ctx, pc)
			}
			return srv.ServeWithProbe(ctx, pc, probe)
		})
}
