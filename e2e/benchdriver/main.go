// Command benchdriver is `make bench`: it starts the real binaries
// (bin/demoapp, bin/coordinator, bin/localproxy) on loopback, measures
// every figure of issue 6 through the tunnel and the same figure directly
// (no tunnel) in the same run, and writes the tables with their ratios to
// docs/benchmarks.md (and standard output).
//
//	go run ./e2e/benchdriver -bin bin -out docs/benchmarks.md
//
// Everything is bounded: 1 GiB per bulk transfer, a fixed duration per
// load, a fixed count of sessions, three rounds of the bulk and
// small-request comparisons (the median pair is reported, as in the
// issue's figures for other tunnels); the whole run takes about a quarter
// of an hour on two cores. Issue 19's rows measure the TCP transport beside
// QUIC, and curl and wrk against a lean origin (tools.go, origin.go). The part of the output file after the notes marker is kept
// from one run to the next: that is where people write what the numbers
// and profiles say.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"quictunnel/internal/service"
)

// config is the driver's settings (flags).
type config struct {
	bin, certs, out string
	bulk            int64          // bytes per bulk transfer
	clients         int            // concurrent keep-alive clients of the small-request load
	load            time.Duration  // duration of each small-request load
	setups          int            // sessions of the set-up benchmark
	sessions        int            // idle sessions of the memory benchmark
	hold            time.Duration  // how long the idle sessions are held
	profile         time.Duration  // CPU profile length
	rounds          int            // bulk and small-request comparisons repeated, the median reported
	keep            bool           // keep the temporary directory (logs, profiles)
	phases          []string       // which benchmarks to run
	only            *regexp.Regexp // if set, the small-request, curl and wrk rows whose path it matches, alone
}

// runsPath says whether the row of path name is measured (-only).
func (c *config) runsPath(name string) bool { return c.only == nil || c.only.MatchString(name) }

var allPhases = []string{"memory", "setup", "bulk", "small", "tools", "profile", "cluster"}

func (c *config) runs(phase string) bool { return slices.Contains(c.phases, phase) }

func (c *config) validate() error {
	switch {
	case c.bulk < 1<<20 || c.bulk > 16<<30:
		return errors.New("-bulk must be 1 MiB to 16 GiB")
	case c.clients < 1 || c.clients > 1024:
		return errors.New("-clients must be 1 to 1024")
	case c.load < 100*time.Millisecond || c.load > time.Minute:
		return errors.New("-load must be 100ms to 1m")
	case c.setups < 10 || c.setups > 100000:
		return errors.New("-setups must be 10 to 100000")
	case c.sessions < 0 || c.sessions > 15000:
		return errors.New("-sessions must be 0 to 15000 (each holds a socket in each of four processes)")
	case c.hold < 0 || c.hold > 5*time.Minute:
		return errors.New("-hold must be 0 to 5m")
	case c.profile < 0 || c.profile > time.Minute:
		return errors.New("-profile must be 0 to 1m")
	case c.rounds < 1 || c.rounds > 9:
		return errors.New("-rounds must be 1 to 9")
	}
	for _, ph := range c.phases {
		if !slices.Contains(allPhases, ph) {
			return fmt.Errorf("-phases: unknown %q (want some of %s)", ph, strings.Join(allPhases, ","))
		}
	}
	for _, f := range []string{filepath.Join(c.bin, "coordinator"), filepath.Join(c.bin, "localproxy"),
		filepath.Join(c.bin, "demoapp"), filepath.Join(c.certs, "coordinator.pem")} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%w (run make build first)", err)
		}
	}
	return nil
}

func main() {
	var cfg config
	var bulkMiB int64
	flag.StringVar(&cfg.bin, "bin", "bin", "directory of the built binaries")
	flag.StringVar(&cfg.certs, "certs", "testdata/certs", "directory of the test certificates")
	flag.StringVar(&cfg.out, "out", "docs/benchmarks.md", "markdown file to write (empty: standard output only)")
	flag.Int64Var(&bulkMiB, "bulk-mib", 1024, "MiB per bulk download and upload")
	flag.IntVar(&cfg.clients, "clients", 64, "concurrent keep-alive clients of the small-request load")
	flag.DurationVar(&cfg.load, "load", 5*time.Second, "duration of each small-request load")
	flag.IntVar(&cfg.setups, "setups", 1000, "new sessions timed by the set-up benchmark")
	flag.IntVar(&cfg.sessions, "sessions", 10000, "idle sessions held by the memory benchmark")
	flag.DurationVar(&cfg.hold, "hold", 30*time.Second, "how long the idle sessions are held")
	flag.DurationVar(&cfg.profile, "profile", 6*time.Second, "CPU profile of the bulk path (0: none)")
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds of the bulk and small-request comparisons (each a tunnel/direct pair); the median is reported")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory with the logs and profiles")
	phases := flag.String("phases", strings.Join(allPhases, ","), "benchmarks to run, comma-separated")
	only := flag.String("only", "", "measure only the small-request, curl and wrk rows whose path matches this regular expression (e.g. 'TCP.*reverse'; the report's targets then lack the others)")
	var relay relayConfig
	flag.StringVar(&relay.listen, "relay-listen", "", "run as one of the set-up benchmark's plain relays, listening here (used by the driver itself)")
	flag.StringVar(&relay.next, "relay-next", "", "the relay's next hop")
	flag.BoolVar(&relay.connect, "relay-connect", false, "the relay answers a CONNECT first")
	flag.BoolVar(&relay.quic, "relay-quic", false, "the hop between the two relays is QUIC (the exit relay listens on UDP)")
	originListen := flag.String("origin-listen", "", "run as the lean origin of the curl and wrk rows, listening here (used by the driver itself)")
	flag.Parse()
	if *originListen != "" {
		if err := runOrigin(*originListen); err != nil {
			fmt.Fprintln(os.Stderr, "origin:", err)
			os.Exit(1)
		}
		return
	}
	if relay.listen != "" {
		if err := runRelay(relay); err != nil {
			fmt.Fprintln(os.Stderr, "relay:", err)
			os.Exit(1)
		}
		return
	}
	cfg.phases = strings.Split(*phases, ",")
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			fmt.Fprintln(os.Stderr, "-only:", err)
			os.Exit(2)
		}
		cfg.only = re
	}
	cfg.bulk = bulkMiB << 20
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := cfg.validate(); err != nil {
		log.Error("bad settings", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 25*time.Minute)
	defer cancel()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("bench failed", "err", err)
		os.Exit(1)
	}
}

// lab is the running system under test.
type lab struct {
	app, proxy, public         string         // TCP addresses
	publicTLS                  string         // coordinator's public HTTPS port
	roots                      *x509.CertPool // the test CA, for publicTLS
	fastProxy                  string         // a second localproxy's, with --fast-open (set-up benchmark only)
	lpMetrics, coMetrics       string         // http://host:port of the metrics/pprof listeners
	demo, coordinator, localpx *proc
	localpxFast                *proc
	relayProxy                 string // the first of two plain relays (set-up benchmark's floor)
	relays                     [2]*proc
	quicRelayProxy             string   // the first of two relays joined by QUIC (the QUIC floor of each benchmark)
	quicRelays                 [2]*proc // entry, exit
	// The TCP transport (issue 19): a localproxy with --transport tcp,
	// its proxy address, and the app it exposes with --expose-tcp.
	localpxTCP          *proc
	tcpProxy, tcpPublic string
	tcpMetrics          string
	// The lean origin of the curl and wrk rows (origin.go), its
	// --expose-tcp ports on each transport, and a localproxy on the TCP
	// transport with --ui=false (the inspector's cost).
	origin, originQUICPort, originTCPPort string
	originProc, localpxNoUI               *proc
	noUIProxy                             string
	dir                                   string
}

func (l *lab) procs() [2]*proc { return [2]*proc{l.localpx, l.coordinator} }

// measuredOn returns the two processes whose CPU and memory r's figures
// are: the QUIC relays for the QUIC floor, the tunnel's otherwise.
func (l *lab) measuredOn(r route) [2]*proc {
	if r.quicFloor {
		return l.quicRelays
	}
	if r.tcp {
		return [2]*proc{l.localpxTCP, l.coordinator}
	}
	return l.procs()
}

func (l *lab) alive() error {
	return errors.Join(l.demo.exited(), l.coordinator.exited(), l.localpx.exited(), l.localpxFast.exited(), l.localpxTCP.exited(),
		l.originProc.exited(), l.localpxNoUI.exited(),
		l.relays[0].exited(), l.relays[1].exited(), l.quicRelays[0].exited(), l.quicRelays[1].exited())
}

func startLab(ctx context.Context, cfg config, dir string) (*lab, func(), error) {
	tcp, err := ports("tcp", 17)
	if err != nil {
		return nil, nil, err
	}
	// The --expose-tcp ports are one range: the demo app's over TCP, the
	// origin's over TCP, the origin's over QUIC.
	exposed, err := portRun(3, tcp)
	if err != nil {
		return nil, nil, err
	}
	udp, err := ports("udp", 3)
	if err != nil {
		return nil, nil, err
	}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	certs, _ := filepath.Abs(cfg.certs)
	roots, err := service.LoadRoots(filepath.Join(certs, "ca.pem"))
	if err != nil {
		return nil, nil, err
	}
	l := &lab{app: addr(tcp[0]), proxy: addr(tcp[1]), public: addr(tcp[2]), publicTLS: addr(tcp[8]), roots: roots, fastProxy: addr(tcp[5]),
		coMetrics: "http://" + addr(tcp[3]), lpMetrics: "http://" + addr(tcp[4]), relayProxy: addr(tcp[6]),
		quicRelayProxy: addr(tcp[9]), tcpProxy: addr(tcp[11]), tcpPublic: addr(exposed[0]), tcpMetrics: "http://" + addr(tcp[13]),
		origin: addr(tcp[14]), originTCPPort: addr(exposed[1]), originQUICPort: addr(exposed[2]), noUIProxy: addr(tcp[15]), dir: dir}
	var started []*proc
	cleanup := func() {
		for i := len(started) - 1; i >= 0; i-- {
			started[i].stop()
		}
	}
	token := "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	if l.originProc, err = startCommand(dir, "origin", self, "-origin-listen", l.origin); err != nil {
		return nil, nil, err
	}
	started = append(started, l.originProc)
	for _, s := range []struct {
		p    **proc
		name string
		args []string
	}{
		{&l.demo, "demoapp", []string{"--listen", l.app}},
		{&l.coordinator, "coordinator", []string{"--listen", addr(udp[0]), "--reporter-listen", addr(udp[1]),
			"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
			"--token", token, "--http", l.public, "--https", l.publicTLS, "--domain", "localhost",
			"--allow-private-targets", // the demo app is on loopback
			"--tcp-listen", addr(tcp[10]), "--port-range", fmt.Sprintf("%d-%d", exposed[0], exposed[2]),
			"--metrics-listen", addr(tcp[3]), "--pprof"}},
		{&l.localpx, "localproxy", []string{"--listen", l.proxy, "--coordinator", addr(udp[0]),
			"--reporter", addr(udp[1]), "--server-name", "localhost", "--ca", filepath.Join(certs, "ca.pem"),
			"--token", token, "--expose", "app=" + l.app, "--metrics-listen", addr(tcp[4]), "--pprof",
			"--expose", "origin=" + l.origin, "--expose-tcp", "originq=" + l.origin + ":" + strconv.Itoa(exposed[2])}},
		{&l.localpxFast, "localproxy+fast-open", []string{"--listen", l.fastProxy, "--coordinator", addr(udp[0]),
			"--reporter", addr(udp[1]), "--server-name", "localhost", "--ca", filepath.Join(certs, "ca.pem"),
			"--token", token, "--name", "fast-open", "--fast-open"}},
		{&l.localpxTCP, "localproxy+tcp", []string{"--listen", l.tcpProxy, "--coordinator", addr(udp[0]),
			"--transport", "tcp", "--coordinator-tcp", addr(tcp[10]),
			"--reporter", addr(udp[1]), "--server-name", "localhost", "--ca", filepath.Join(certs, "ca.pem"),
			"--token", token, "--name", "tcp", "--expose-tcp", fmt.Sprintf("apptcp=%s:%d", l.app, exposed[0]),
			"--expose", "appt=" + l.app, "--expose", "origint=" + l.origin,
			"--expose-tcp", fmt.Sprintf("origintcp=%s:%d", l.origin, exposed[1]),
			"--metrics-listen", addr(tcp[13]), "--pprof"}},
		{&l.localpxNoUI, "localproxy+tcp-noui", []string{"--listen", l.noUIProxy, "--coordinator", addr(udp[0]),
			"--transport", "tcp", "--coordinator-tcp", addr(tcp[10]), "--ui=false",
			"--reporter", addr(udp[1]), "--server-name", "localhost", "--ca", filepath.Join(certs, "ca.pem"),
			"--token", token, "--name", "tcp-noui", "--expose", "originn=" + l.origin}},
	} {
		p, err := startProc(dir, cfg.bin, s.name, s.args...)
		if err != nil {
			cleanup()
			return nil, nil, err
		}
		*s.p = p
		started = append(started, p)
	}
	for _, r := range []struct {
		p    **proc
		name string
		args []string
	}{
		{&l.relays[1], "relay2", []string{"-relay-listen", addr(tcp[7]), "-relay-next", l.app}},
		{&l.relays[0], "relay1", []string{"-relay-listen", l.relayProxy, "-relay-next", addr(tcp[7]), "-relay-connect"}},
		{&l.quicRelays[1], "quic-relay2", []string{"-relay-listen", addr(udp[2]), "-relay-next", l.app, "-relay-quic"}},
		{&l.quicRelays[0], "quic-relay1", []string{"-relay-listen", l.quicRelayProxy, "-relay-next", addr(udp[2]),
			"-relay-connect", "-relay-quic"}},
	} {
		p, err := startCommand(dir, r.name, self, r.args...)
		if err != nil {
			cleanup()
			return nil, nil, err
		}
		*r.p = p
		started = append(started, p)
	}
	// Ready when a request passes each way.
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range []route{absoluteFormRoute(l.app, l.proxy), reverseRoute(l.public), reverseTLSRoute(l.publicTLS, l.roots), reverseH2Route(l.publicTLS, l.roots),
		absoluteFormRoute(l.app, l.fastProxy),
		connectRoute(l.app, l.relayProxy), quicFloorRoute(l.app, l.quicRelayProxy),
		overTCP(connectRoute(l.app, l.tcpProxy)), overTCP(exposeTCPRoute(l.tcpPublic)), overTCP(hostRoute(l.public, "appt.localhost")),
		hostRoute(l.public, "origin.localhost"), hostRoute(l.public, "origint.localhost"), hostRoute(l.public, "originn.localhost"),
		exposeTCPRoute(l.originTCPPort), exposeTCPRoute(l.originQUICPort)} {
		for {
			lctx, c := context.WithTimeout(ctx, 2*time.Second)
			_, err := smallLoad(lctx, r, 1, time.Millisecond)
			c()
			if err == nil {
				break
			}
			if aerr := l.alive(); aerr != nil || time.Now().After(deadline) || ctx.Err() != nil {
				cleanup()
				if why := errors.Join(aerr, ctx.Err()); why != nil {
					return nil, nil, fmt.Errorf("the lab did not come up (%v): %w", err, why)
				}
				return nil, nil, fmt.Errorf("the lab did not come up: %w", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return l, cleanup, nil
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	if n, err := raiseFileLimit(); err != nil || n < uint64(cfg.sessions)+1000 {
		return fmt.Errorf("open-file limit %d is too low for %d sessions (ulimit -n): %v", n, cfg.sessions, err)
	}
	dir, err := os.MkdirTemp("", "quictunnel-bench-")
	if err != nil {
		return err
	}
	var (
		l       *lab
		stopLab func()
	)
	if cfg.keep {
		log.Info("logs and profiles kept", "dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	rep := &report{cfg: cfg, started: time.Now()}
	rep.loadavg, _ = os.ReadFile("/proc/loadavg")
	// Memory runs last, on freshly started processes: the Go runtime
	// returns freed memory to the kernel only slowly, so after the other
	// benchmarks RSS would start high (and ten thousand sessions would
	// leave it high for the peak-RSS figures if it ran first).
	phases := []struct {
		name  string
		fresh bool
		run   func() error
	}{
		// A lab of its own (cluster.go).
		{"cluster", false, func() error { return benchCluster(ctx, cfg, dir, rep) }},
		{"setup", false, func() error { return benchSetup(ctx, cfg, l, rep) }},
		{"small", false, func() error { return benchSmall(ctx, cfg, l, rep) }},
		// Before bulk, which leaves coordinator's RSS high for a while.
		{"tools", false, func() error { return benchTools(ctx, cfg, l, rep) }},
		{"bulk", false, func() error { return benchBulk(ctx, cfg, l, rep, log) }},
		{"profile", false, func() error { return benchProfile(ctx, cfg, l, rep) }},
		{"memory", true, func() error { return benchMemory(ctx, cfg, l, rep) }},
	}
	defer func() {
		if stopLab != nil {
			stopLab()
		}
	}()
	for _, ph := range phases {
		if !cfg.runs(ph.name) || ph.name == "profile" && cfg.profile == 0 || ph.name == "memory" && cfg.sessions == 0 {
			continue
		}
		if ph.name != "cluster" && (l == nil || ph.fresh) {
			if l != nil {
				if err := l.alive(); err != nil {
					return err
				}
				stopLab()
			}
			if l, stopLab, err = startLab(ctx, cfg, dir); err != nil {
				return err
			}
		}
		log.Info("running", "benchmark", ph.name)
		if err := ph.run(); err != nil {
			return fmt.Errorf("%s: %w", ph.name, err)
		}
	}
	if l != nil {
		if err := l.alive(); err != nil {
			return err
		}
	}
	rep.elapsed = time.Since(rep.started)
	md := rep.markdown(readNotes(cfg.out))
	fmt.Print(md)
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
			return err
		}
		log.Info("wrote " + cfg.out)
	}
	return nil
}

// notesMarker starts the hand-written part of the output file, which a
// new run keeps.
const notesMarker = "<!-- notes: written by hand, kept by make bench -->"

func readNotes(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	_, notes, ok := strings.Cut(string(b), notesMarker)
	if !ok {
		return ""
	}
	return strings.TrimLeft(notes, "\n")
}
