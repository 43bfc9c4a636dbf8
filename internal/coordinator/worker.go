package coordinator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/internal/metrics"
	"quictunnel/internal/service"
	"quictunnel/quictun"
)

// WorkerConfig configures coordinator's dial-back part run on its own
// (coordinator --role dialback): it connects to coordinator, dials targets
// and dials back to clients from its own address.
type WorkerConfig struct {
	// Listen is the UDP address the worker dials from. Default ":4433".
	Listen string
	// Coordinator is coordinator's QUIC address, "host:port". Required.
	Coordinator string
	// Token is coordinator's --worker-token. Required.
	Token string
	// Certificate is coordinator's own certificate and key. Required.
	Certificate tls.Certificate
	// RootCAs, ServerName and InsecureSkipVerify verify coordinator.
	RootCAs            *x509.CertPool
	ServerName         string
	InsecureSkipVerify bool
	// Advertise lists the addresses clients punch towards. Default: the
	// address coordinator sees the worker at.
	Advertise []netip.AddrPort
	// TargetDialTimeout bounds dialing a target. Default 10s.
	TargetDialTimeout time.Duration
	// Targets decides which targets may be dialed, as for coordinator:
	// give workers the same policy. Default: public addresses only.
	Targets   TargetPolicy
	Logger    *slog.Logger
	AccessLog *slog.Logger
}

// Worker is a dial-back worker with its socket bound.
type Worker struct {
	udp    *net.UDPConn
	tr     *quic.Transport
	worker *quictun.Worker
	log    *slog.Logger
}

// NewWorker binds the worker's socket. Run serves.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if cfg.Listen == "" {
		cfg.Listen = ":4433"
	}
	own, err := ownAddrs()
	if err != nil {
		return nil, err
	}
	targets, err := cfg.Targets.compile(own)
	if err != nil {
		return nil, err
	}
	udp, err := service.ListenUDP(cfg.Listen)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp}
	w, err := quictun.NewWorker(quictun.WorkerConfig{
		Transport: tr, Coordinator: cfg.Coordinator, Token: cfg.Token, Certificate: cfg.Certificate,
		RootCAs: cfg.RootCAs, ServerName: cfg.ServerName, InsecureSkipVerify: cfg.InsecureSkipVerify,
		Advertise: cfg.Advertise, TargetDialTimeout: cfg.TargetDialTimeout, DialTarget: targets.dialer(),
		Logger: cfg.Logger, AccessLog: cfg.AccessLog,
	})
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log.Info("dial-back worker target policy", "targets", targets.String())
	return &Worker{udp: udp, tr: tr, worker: w, log: log}, nil
}

// Addr is the worker's UDP address.
func (w *Worker) Addr() net.Addr { return w.udp.LocalAddr() }

// Stats returns the worker's counters.
func (w *Worker) Stats() quictun.WorkerStats { return w.worker.Stats() }

// RegisterMetrics adds the worker's metrics to r.
func (w *Worker) RegisterMetrics(r *metrics.Registry) { r.AddDialBackWorker(w.worker) }

// Run serves until ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	defer w.udp.Close()
	defer w.tr.Close()
	w.log.Info("dial-back worker ready", "udp", w.udp.LocalAddr())
	return w.worker.Run(ctx)
}
