// Package coordinator assembles the coordinator service: the QUIC tunnel
// server (quictun) on one UDP socket and, optionally, an embedded STUN
// reporter (natt) on another. cmd/coordinator maps flags onto Config;
// tests run the same assembly in process.
package coordinator

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

	"quictunnel/internal/service"
	"quictunnel/natt"
	"quictunnel/quictun"
)

// Config configures a coordinator. Zero values select the defaults given.
type Config struct {
	// Listen is the UDP address for QUIC. Default ":4433".
	Listen string
	// Certificate is the TLS certificate clients verify. Required.
	Certificate tls.Certificate
	// Token is the secret clients present. Required.
	Token string
	// ReporterListen, if set, runs a STUN reporter on this UDP address.
	ReporterListen string
	// ReporterKeepAlive is the embedded reporter's keepalive interval.
	// Default: natt's default.
	ReporterKeepAlive time.Duration
	// TargetDialTimeout bounds dialing a target. Default 10s.
	TargetDialTimeout time.Duration
	// DialBackTimeout bounds a dial-back. Default 10s.
	DialBackTimeout time.Duration
	// DialTarget, if set, replaces the TCP dialer for targets.
	DialTarget func(ctx context.Context, network, address string) (net.Conn, error)
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
	// AccessLog receives one line per session. Default: Logger.
	AccessLog *slog.Logger
}

// Coordinator is a coordinator with its sockets bound.
type Coordinator struct {
	cfg      Config
	log      *slog.Logger
	udp      *net.UDPConn
	tr       *quic.Transport
	server   *quictun.Server
	reporter *natt.Server
	stunPC   *net.UDPConn
}

// New binds the sockets. Run serves them.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Listen == "" {
		cfg.Listen = ":4433"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Coordinator{cfg: cfg, log: cfg.Logger}
	udp, err := service.ListenUDP(cfg.Listen)
	if err != nil {
		return nil, err
	}
	c.udp, c.tr = udp, &quic.Transport{Conn: udp}
	c.server, err = quictun.NewServer(quictun.ServerConfig{
		Transport:         c.tr,
		Certificate:       cfg.Certificate,
		Token:             cfg.Token,
		DialTarget:        cfg.DialTarget,
		TargetDialTimeout: cfg.TargetDialTimeout,
		DialBackTimeout:   cfg.DialBackTimeout,
		Logger:            c.log,
		AccessLog:         cfg.AccessLog,
	})
	if err != nil {
		c.tr.Close()
		c.udp.Close()
		return nil, err
	}
	if cfg.ReporterListen != "" {
		c.reporter, err = natt.NewServer(natt.ServerConfig{KeepAliveInterval: cfg.ReporterKeepAlive, Logger: c.log.With("component", "reporter")})
		if err == nil {
			c.stunPC, err = service.ListenUDP(cfg.ReporterListen)
		}
		if err != nil {
			c.tr.Close()
			c.udp.Close()
			return nil, fmt.Errorf("embedded reporter: %w", err)
		}
	}
	return c, nil
}

// Addr is the QUIC socket's address.
func (c *Coordinator) Addr() net.Addr { return c.udp.LocalAddr() }

// ReporterAddr is the embedded reporter's address, or nil.
func (c *Coordinator) ReporterAddr() net.Addr {
	if c.stunPC == nil {
		return nil
	}
	return c.stunPC.LocalAddr()
}

// Server exposes the tunnel server, for status and tests.
func (c *Coordinator) Server() *quictun.Server { return c.server }

// Run serves until ctx ends, then closes every connection and socket.
func (c *Coordinator) Run(ctx context.Context) error {
	defer c.udp.Close()
	defer c.tr.Close()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.server.Serve(ctx) })
	summary := []any{"quic", c.udp.LocalAddr()}
	if c.reporter != nil {
		defer c.stunPC.Close()
		g.Go(func() error { return c.reporter.Serve(ctx, c.stunPC) })
		summary = append(summary, "reporter", c.stunPC.LocalAddr())
	}
	c.log.Info("coordinator ready", summary...)
	return g.Wait()
}
