// Package metrics serves a service's Prometheus metrics, /healthz and,
// optionally, pprof, on one HTTP listener (--metrics-listen). Metrics are
// read from the components' own Stats snapshots when Prometheus scrapes,
// so the data path carries no extra counters.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"quictunnel/quictun"
)

// Namespace prefixes every metric name.
const Namespace = "quictunnel"

// Registry collects one service's metrics.
type Registry struct {
	reg   *prometheus.Registry
	pages map[string]http.Handler // more pages Serve answers, by pattern
}

// HandlePage adds a page that Serve answers beside /metrics, such as a
// status in JSON. Call it before Serve.
func (r *Registry) HandlePage(pattern string, h http.Handler) {
	if r.pages == nil {
		r.pages = map[string]http.Handler{}
	}
	r.pages[pattern] = h
}

// NewRegistry returns a registry with the Go runtime and process
// collectors.
func NewRegistry() *Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Registry{reg: r}
}

// Counter registers a counter read from f at scrape time.
func (r *Registry) Counter(name, help string, f func() float64) {
	r.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, f))
}

// Gauge registers a gauge read from f at scrape time.
func (r *Registry) Gauge(name, help string, f func() float64) {
	r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help}, f))
}

// Histogram registers a histogram of durations, in seconds, read from f
// at scrape time.
func (r *Registry) Histogram(name, help string, f func() quictun.HistogramSnapshot) {
	r.reg.MustRegister(histogramFunc{
		desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, nil, nil),
		f:    f,
	})
}

// LabeledCounter registers a counter with one label, one series per
// value in values (so series exist before their first count), read from f
// at scrape time.
func (r *Registry) LabeledCounter(name, help, label string, values []string, f func() map[string]int64) {
	r.reg.MustRegister(labeledCounterFunc{
		desc:   prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, []string{label}, nil),
		values: values,
		f:      f,
	})
}

// labeledCounterFunc is a Collector for LabeledCounter.
type labeledCounterFunc struct {
	desc   *prometheus.Desc
	values []string
	f      func() map[string]int64
}

func (c labeledCounterFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c labeledCounterFunc) Collect(ch chan<- prometheus.Metric) {
	m := c.f()
	for _, v := range c.values {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(m[v]), v)
	}
}

// Info registers a gauge of 1 whose one label is read from f at scrape
// time; no series while f returns "".
func (r *Registry) Info(name, help, label string, f func() string) {
	r.reg.MustRegister(infoFunc{
		desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, []string{label}, nil),
		f:    f,
	})
}

// infoFunc is a Collector for Info.
type infoFunc struct {
	desc *prometheus.Desc
	f    func() string
}

func (c infoFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c infoFunc) Collect(ch chan<- prometheus.Metric) {
	if v := c.f(); v != "" {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1, v)
	}
}

// histogramFunc is a Collector turning a quictun.HistogramSnapshot into a
// Prometheus histogram.
type histogramFunc struct {
	desc *prometheus.Desc
	f    func() quictun.HistogramSnapshot
}

func (h histogramFunc) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h histogramFunc) Collect(ch chan<- prometheus.Metric) {
	s := h.f()
	buckets := make(map[float64]uint64, len(s.Bounds))
	var cum uint64
	for i, b := range s.Bounds {
		cum += s.Counts[i]
		buckets[b.Seconds()] = cum
	}
	ch <- prometheus.MustNewConstHistogram(h.desc, s.Count, s.Sum.Seconds(), buckets)
}

// Serve answers /metrics, /healthz and, with withPprof, /debug/pprof/ on
// ln until ctx ends.
func (r *Registry) Serve(ctx context.Context, ln net.Listener, withPprof bool, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	for pattern, h := range r.pages {
		mux.Handle(pattern, h)
	}
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	})
	defer stop()
	log.Info("metrics ready", "listen", ln.Addr(), "pprof", withPprof)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// RunWith runs run(ctx); when addr is set it also serves the metrics that
// register adds on addr, until run returns.
func RunWith(ctx context.Context, addr string, withPprof bool, log *slog.Logger, register func(*Registry), run func(context.Context) error) error {
	if addr == "" {
		return run(ctx)
	}
	r := NewRegistry()
	register(r)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, ln, withPprof, log) }()
	err = run(ctx)
	cancel()
	if serr := <-done; err == nil && serr != nil {
		err = fmt.Errorf("metrics: %w", serr)
	}
	return err
}
