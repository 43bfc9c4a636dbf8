package coordinator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/internal/metrics"
	"quictunnel/internal/service"
	"quictunnel/internal/udpgro"
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
	Targets TargetPolicy
	// ShutdownTimeout is how long Run lets sessions in progress finish
	// once its context ends; no new ones are taken meanwhile. Default 0:
	// close them at once.
	ShutdownTimeout time.Duration
	// QlogDir, if set, is an existing directory for a qlog trace of each
	// QUIC connection (debugging).
	QlogDir   string
	Logger    *slog.Logger
	AccessLog *slog.Logger
}

// Worker is a dial-back worker with its socket bound.
type Worker struct {
	udp      *net.UDPConn
	tr       *quic.Transport
	worker   *quictun.Worker
	targets  *targetPolicy
	log      *slog.Logger
	shutdown time.Duration
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
	tr := &quic.Transport{Conn: udpgro.Wrap(udp)}
	w, err := quictun.NewWorker(quictun.WorkerConfig{
		Transport: tr, Coordinator: cfg.Coordinator, Token: cfg.Token, Certificate: cfg.Certificate,
		RootCAs: cfg.RootCAs, ServerName: cfg.ServerName, InsecureSkipVerify: cfg.InsecureSkipVerify,
		Advertise: cfg.Advertise, TargetDialTimeout: cfg.TargetDialTimeout, DialTarget: targets.dialer(),
		QlogDir: cfg.QlogDir, Logger: cfg.Logger, AccessLog: cfg.AccessLog,
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
	return &Worker{udp: udp, tr: tr, worker: w, targets: targets, log: log, shutdown: cfg.ShutdownTimeout}, nil
}

// Addr is the worker's UDP address.
func (w *Worker) Addr() net.Addr { return w.udp.LocalAddr() }

// Stats returns the worker's counters.
func (w *Worker) Stats() quictun.WorkerStats { return w.worker.Stats() }

// RegisterMetrics adds the worker's metrics to r.
func (w *Worker) RegisterMetrics(r *metrics.Registry) {
	r.AddDialBackWorker(w.worker)
	w.targets.registerMetrics(r)
}

// Run serves until ctx ends, then drains for up to ShutdownTimeout (no new
// jobs; coordinator stops giving the worker clients; sessions in progress
// may finish) and closes everything.
func (w *Worker) Run(ctx context.Context) error {
	defer w.udp.Close()
	defer w.tr.Close()
	hard, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		select {
		case <-ctx.Done():
			w.drain()
		case <-hard.Done():
		}
		stop()
	})
	w.log.Info("dial-back worker ready", "udp", w.udp.LocalAddr())
	err := w.worker.Run(hard)
	stop()
	return err
}

// drain lets sessions in progress finish, for up to ShutdownTimeout.
func (w *Worker) drain() {
	if w.shutdown <= 0 {
		return
	}
	w.log.Info("draining: no new jobs", "sessions_active", w.worker.Stats().ActiveSessions, "timeout", w.shutdown)
	ctx, cancel := context.WithTimeoutCause(context.Background(), w.shutdown,
		fmt.Errorf("--shutdown-timeout %s passed", w.shutdown))
	defer cancel()
	if err := w.worker.Drain(ctx); err != nil {
		w.log.Warn("closing sessions still open", "err", err)
		return
	}
	w.log.Info("drained: every session finished")
}
