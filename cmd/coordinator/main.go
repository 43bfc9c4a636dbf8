// Command coordinator is the tunnel's public host: it authenticates
// localproxy clients over QUIC (TLS 1.3 with the operator's key pair), dials
// the targets they ask for and dials back to them with each session. With
// --reporter-listen it also runs the STUN reporter in the same process,
// pinging every NAT_KEEP_ALIVE_INTERVAL milliseconds like the standalone one.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"quictunnel/httpproxy"
	"quictunnel/internal/coordinator"
	"quictunnel/internal/metrics"
	"quictunnel/internal/service"
	"quictunnel/quictun"
)

func main() {
	os.Exit(service.Main(service.App{
		Name:  "coordinator",
		Usage: "public end of the tunnel: authenticates clients, dials targets, dials back",
		Flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "role", Value: "all", EnvVars: []string{"COORDINATOR_ROLE"},
				Usage: "all: the whole coordinator; dialback: only the dial-back part, on another address, connected to --coordinator (see docs/design.md)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "worker-token", EnvVars: []string{"COORDINATOR_WORKER_TOKEN"},
				Usage: "secret shared by coordinator and its dial-back workers (--role dialback); without it coordinator accepts no workers"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "coordinator", EnvVars: []string{"COORDINATOR_COORDINATOR"},
				Usage: "with --role dialback: coordinator's QUIC address, host:port"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "ca", EnvVars: []string{"COORDINATOR_CA"},
				Usage: "with --role dialback: PEM CA certificate(s) that signed coordinator's certificate (default: system roots)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "server-name", EnvVars: []string{"COORDINATOR_SERVER_NAME"},
				Usage: "with --role dialback: name coordinator's certificate must carry (default: host of --coordinator)"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "advertise", EnvVars: []string{"COORDINATOR_ADVERTISE"},
				Usage: "with --role dialback: public ip:port clients punch towards, one per address family (default: the address coordinator sees)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "listen", Value: ":4433", EnvVars: []string{"COORDINATOR_LISTEN"},
				Usage: "UDP address for QUIC (clients connect here; dial-backs leave from here)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "tcp-listen", EnvVars: []string{"COORDINATOR_TCP_LISTEN"},
				Usage: "also serve clients over TLS on TCP at this address (e.g. :443), for networks that block UDP"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "cert", EnvVars: []string{"COORDINATOR_CERT"},
				Usage: "PEM certificate (chain) file, e.g. made with openssl (required unless --acme-email)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "key", EnvVars: []string{"COORDINATOR_KEY"},
				Usage: "PEM private key file for --cert"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "acme-email", EnvVars: []string{"COORDINATOR_ACME_EMAIL"},
				Usage: "obtain and renew certificates automatically from an ACME CA, with this contact address (instead of --cert/--key): the one of --acme-name for QUIC and --tcp-listen, and for --https one per published name on demand (or one wildcard, with --acme-dns-hook)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "acme-ca", Value: certmagic.LetsEncryptProductionCA, EnvVars: []string{"COORDINATOR_ACME_CA"},
				Usage: "with --acme-email: the ACME CA's directory URL"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "acme-dir", EnvVars: []string{"COORDINATOR_ACME_DIR"}, TakesFile: true,
				Usage: "with --acme-email: directory keeping the account, certificates and keys across restarts (default: $STATE_DIRECTORY/acme when systemd sets STATE_DIRECTORY, else the user's data directory)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "acme-name", EnvVars: []string{"COORDINATOR_ACME_NAME"},
				Usage: "with --acme-email: coordinator's own DNS name, which clients connect to (default: --domain)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "acme-dns-hook", EnvVars: []string{"COORDINATOR_ACME_DNS_HOOK"}, TakesFile: true,
				Usage: "with --acme-email: prove names over DNS-01 with this program, run as PATH present|cleanup FQDN VALUE to add or remove a TXT record (see docs/operations.md); --https then gets one wildcard *.DOMAIN"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "acme-dns-resolvers", EnvVars: []string{"COORDINATOR_ACME_DNS_RESOLVERS"},
				Usage: "with --acme-dns-hook: DNS servers, HOST[:PORT][,...], asked after the hook until each serves the TXT record (default: none, the hook's exit 0 means it is served)"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "acme-renew-check", Value: certmagic.DefaultRenewCheckInterval, EnvVars: []string{"COORDINATOR_ACME_RENEW_CHECK"},
				Usage: "with --acme-email: how often to check whether a certificate is due for renewal"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "token", EnvVars: []string{"COORDINATOR_TOKEN"},
				Usage: "shared secret clients must present (or use --tokens)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "tokens", EnvVars: []string{"COORDINATOR_TOKENS"},
				Usage: "YAML file of per-client tokens, each optionally limited to service names (see docs/operations.md)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "client-ca", EnvVars: []string{"COORDINATOR_CLIENT_CA"}, TakesFile: true,
				Usage: "PEM CA certificate(s): clients must present a certificate it signed (mutual TLS) instead of a token; its name picks the --tokens entry with that client name"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "reporter-listen", EnvVars: []string{"COORDINATOR_REPORTER_LISTEN"},
				Usage: "also run the STUN reporter on this UDP address (e.g. :3478)"}),
			altsrc.NewInt64Flag(&cli.Int64Flag{Name: "reporter-keepalive-interval", Value: 15000, EnvVars: []string{"COORDINATOR_REPORTER_KEEPALIVE_INTERVAL", "NAT_KEEP_ALIVE_INTERVAL"},
				Usage: "with --reporter-listen: milliseconds between keepalive pings to clients that asked for them; keep it below the NAT's UDP timeout"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "http", EnvVars: []string{"COORDINATOR_HTTP"},
				Usage: "public TCP address where exposed HTTP apps are reached as NAME.DOMAIN (e.g. :8080)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "https", EnvVars: []string{"COORDINATOR_HTTPS"},
				Usage: "public TCP address where exposed HTTP apps are reached over TLS as https://NAME.DOMAIN (e.g. :443), with --https-cert"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "http-to-https", EnvVars: []string{"COORDINATOR_HTTP_TO_HTTPS"},
				Usage: "answer every request on --http with a redirect (308) to the same URL on --https"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "https-cert", EnvVars: []string{"COORDINATOR_HTTPS_CERT"}, TakesFile: true,
				Usage: "PEM certificate (chain) for --https, covering *.DOMAIN; SIGHUP reads it again (default: --cert)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "https-key", EnvVars: []string{"COORDINATOR_HTTPS_KEY"}, TakesFile: true,
				Usage: "PEM private key file for --https-cert (default: --key)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "domain", Value: "localhost", EnvVars: []string{"COORDINATOR_DOMAIN"},
				Usage: "domain of exposed names: requests for NAME.DOMAIN go to the app exposed as NAME"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "port-range", EnvVars: []string{"COORDINATOR_PORT_RANGE"},
				Usage: "public TCP ports exposed services may have, MIN-MAX (e.g. 20000-20100)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "public-bind", EnvVars: []string{"COORDINATOR_PUBLIC_BIND"},
				Usage: "address the ports of --port-range listen on (default: all)"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "trusted-proxies", EnvVars: []string{"COORDINATOR_TRUSTED_PROXIES"},
				Usage: "CIDR[,CIDR...] of load balancers in front of --http/--https whose Forwarded, X-Forwarded-* and X-Real-IP reach the apps (extended); from anyone else they are replaced"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "list-names", EnvVars: []string{"COORDINATOR_LIST_NAMES"},
				Usage: "say which names are exposed on \"not found\" pages"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "name-grace", Value: coordinator.DefaultNameGrace, EnvVars: []string{"COORDINATOR_NAME_GRACE"},
				Usage: "how long an offline client's names and ports stay reserved for its token or certificate (0: not at all)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "state-file", EnvVars: []string{"COORDINATOR_STATE_FILE"}, TakesFile: true,
				Usage: "JSON file keeping which client holds which name and port across restarts (default: $STATE_DIRECTORY/coordinator-names.json when systemd sets STATE_DIRECTORY, else none; \"\" for none)"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "cluster-etcd", EnvVars: []string{"COORDINATOR_CLUSTER_ETCD"},
				Usage: "URL[,URL...] of etcd: run as one node of a cluster of coordinators sharing names and ports there (docs/operations.md, \"Running a cluster\")"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "node-id", EnvVars: []string{"COORDINATOR_NODE_ID"},
				Usage: "with --cluster-etcd: this node's name, unique in the cluster (default: the host name)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "cluster-listen", EnvVars: []string{"COORDINATOR_CLUSTER_LISTEN"},
				Usage: "with --cluster-etcd: UDP address where the other nodes forward public connections for this node's clients (QUIC)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "cluster-advertise", EnvVars: []string{"COORDINATOR_CLUSTER_ADVERTISE"},
				Usage: "with --cluster-etcd: host:port the other nodes reach --cluster-listen at (default: --cluster-listen, when it names a host)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "cluster-token", EnvVars: []string{"COORDINATOR_CLUSTER_TOKEN"},
				Usage: "with --cluster-etcd: secret every node shares; inter-node connections prove it both ways (or --cluster-token-file)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "cluster-token-file", EnvVars: []string{"COORDINATOR_CLUSTER_TOKEN_FILE"}, TakesFile: true,
				Usage: "with --cluster-etcd: file holding the cluster token"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "cluster-lease", Value: coordinator.DefaultClusterLease, EnvVars: []string{"COORDINATOR_CLUSTER_LEASE"},
				Usage: "with --cluster-etcd: the node's etcd lease; a node silent this long is taken for gone and its clients' names go offline (kept for --name-grace)"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "target-dial-timeout", Value: 10 * time.Second, EnvVars: []string{"COORDINATOR_TARGET_DIAL_TIMEOUT"},
				Usage: "how long to try reaching a target before answering 502/504"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "dial-back-timeout", Value: 10 * time.Second, EnvVars: []string{"COORDINATOR_DIAL_BACK_TIMEOUT"},
				Usage: "how long to try dialing back to a client"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "allow-private-targets", EnvVars: []string{"COORDINATOR_ALLOW_PRIVATE_TARGETS"},
				Usage: "let clients reach loopback, private, link-local and coordinator's own addresses (refused by default)"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "allow-target", EnvVars: []string{"COORDINATOR_ALLOW_TARGET"},
				Usage: "allow this target even if private: a CIDR, an IP, a host name or *.suffix (repeatable)"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "only-allowed-targets", EnvVars: []string{"COORDINATOR_ONLY_ALLOWED_TARGETS"},
				Usage: "refuse every target not on --allow-target (other host names are refused without a DNS lookup)"}),
			altsrc.NewIntSliceFlag(&cli.IntSliceFlag{Name: "deny-port", EnvVars: []string{"COORDINATOR_DENY_PORT"},
				Usage: "never dial targets on this port, e.g. 25 (repeatable)"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "dns-cache-ttl", Value: coordinator.DefaultDNSCacheTTL, EnvVars: []string{"COORDINATOR_DNS_CACHE_TTL"},
				Usage: "how long to reuse the addresses a target name resolved to (0: resolve it for every session)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"COORDINATOR_METRICS_LISTEN"},
				Usage: "serve Prometheus metrics at /metrics and a health check at /healthz on this TCP address (e.g. 127.0.0.1:9100)"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "pprof", EnvVars: []string{"COORDINATOR_PPROF"},
				Usage: "also serve Go profiling at /debug/pprof/ on --metrics-listen"}),
			altsrc.NewIntFlag(&cli.IntFlag{Name: "max-sessions-per-client", Value: 10000, EnvVars: []string{"COORDINATOR_MAX_SESSIONS_PER_CLIENT"},
				Usage: "most forward sessions one client may have open through coordinator at once; beyond it the browser gets 503"}),
			service.QlogDirFlag("COORDINATOR_"),
			altsrc.NewIntFlag(&cli.IntFlag{Name: "max-clients", Value: 10000, EnvVars: []string{"COORDINATOR_MAX_CLIENTS"},
				Usage: "most clients connected at once; others are refused until one leaves"}),
			altsrc.NewIntFlag(&cli.IntFlag{Name: "max-handshakes", Value: quictun.DefaultMaxHandshakes, EnvVars: []string{"COORDINATOR_MAX_HANDSHAKES"},
				Usage: "most connections not yet authenticated (no valid Hello yet) at once; others are refused"}),
			altsrc.NewIntFlag(&cli.IntFlag{Name: "max-handshakes-per-source", Value: quictun.DefaultMaxHandshakesPerSource, EnvVars: []string{"COORDINATOR_MAX_HANDSHAKES_PER_SOURCE"},
				Usage: "most connections not yet authenticated from one IP address at once"}),
			altsrc.NewIntFlag(&cli.IntFlag{Name: "retry-above-handshakes", Value: quictun.DefaultRetryAbove, EnvVars: []string{"COORDINATOR_RETRY_ABOVE_HANDSHAKES"},
				Usage: "with this many connections not yet authenticated, new ones must first prove their address with a QUIC Retry (one round trip more); -1: always"}),
			altsrc.NewIntFlag(&cli.IntFlag{Name: "max-public-conns", Value: coordinator.DefaultMaxPublicConns, EnvVars: []string{"COORDINATOR_MAX_PUBLIC_CONNS"},
				Usage: "most public connections to exposed HTTP apps open at once (--http and --https together; each dedicated port alike); more wait until one closes; -1: no limit"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "body-read-timeout", Value: 30 * time.Second, EnvVars: []string{"COORDINATOR_BODY_READ_TIMEOUT"},
				Usage: "how long a public request's body may stop arriving before the request is answered 408 and ended on every hop"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "shutdown-timeout", Value: 10 * time.Second, EnvVars: []string{"COORDINATOR_SHUTDOWN_TIMEOUT"},
				Usage: "on SIGTERM or SIGINT, how long sessions in progress may take to finish before they are closed"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "access-log", EnvVars: []string{"COORDINATOR_ACCESS_LOG"},
				Usage: "also write one line per session to this file (format follows --log-format)"}),
		},
		Commands: []*cli.Command{{
			Name:      "cluster",
			Usage:     "cluster status: show what the cluster registry (--cluster-etcd) holds: nodes, clients per node, names, ports",
			ArgsUsage: "status",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			},
			Action: clusterStatus,
		}},
		Check:       checkSettings,
		ListenFlags: []string{"listen", "tcp-listen", "reporter-listen", "http", "https", "metrics-listen", "cluster-listen"},
		HostFlags:   []string{"public-bind"},
		Run:         run,
		// quic-go handles each connection on one goroutine; with the few
		// clients coordinator usually has, more cores mostly add hand-offs
		// between them (docs/benchmarks.md: ~25% more CPU per GiB with both
		// of two cores). A server with many busy clients raises --procs.
		Procs: service.HalfTheCores(),
	}, os.Args))
}

func run(ctx context.Context, c *cli.Context, log *slog.Logger) error {
	if err := checkCertSettings(c); err != nil {
		return err
	}
	var cert tls.Certificate
	if c.String("cert") != "" {
		var err error
		if cert, err = tls.LoadX509KeyPair(c.String("cert"), c.String("key")); err != nil {
			return service.Usage(fmt.Errorf("load --cert/--key: %w", err))
		}
	}
	accessLog, closeLog, err := service.AccessLogger(log, c.String("access-log"), c.String("log-format"))
	if err != nil {
		return err
	}
	defer closeLog()
	qlogDir, err := service.QlogDir(c, log)
	if err != nil {
		return err
	}
	switch c.String("role") {
	case "all":
	case "dialback":
		return runWorker(ctx, c, log, accessLog, cert, qlogDir)
	default:
		return &service.SettingError{Setting: "--role", Value: c.String("role"), Reason: "want all or dialback"}
	}
	var tokens []coordinator.TokenEntry
	switch {
	case c.String("tokens") != "":
		if tokens, err = coordinator.LoadTokens(c.String("tokens")); err != nil {
			return service.Usage(fmt.Errorf("--tokens: %w", err))
		}
	case c.String("token") == "" && c.String("client-ca") == "":
		return &service.SettingError{Setting: "--token", Reason: "required: set --token (one shared secret), --tokens FILE (per-client tokens) or --client-ca FILE (client certificates)"}
	}
	clientCAs, err := loadClientCAs(c.String("client-ca"))
	if err != nil {
		return service.Usage(err)
	}
	reporterKeepAlive := c.Int64("reporter-keepalive-interval")
	if reporterKeepAlive <= 0 {
		return fmt.Errorf("--reporter-keepalive-interval (NAT_KEEP_ALIVE_INTERVAL) must be a positive number of milliseconds, got %d", reporterKeepAlive)
	}
	var ports coordinator.PortRange
	if r := c.String("port-range"); r != "" {
		if ports, err = coordinator.ParsePortRange(r); err != nil {
			return service.Usage(fmt.Errorf("--port-range: %w", err))
		}
	}
	if c.Bool("http-to-https") && (c.String("http") == "" || c.String("https") == "") {
		return &service.SettingError{Setting: "--http-to-https", Reason: "needs --http (the port that redirects) and --https (where to)"}
	}
	var auto *autoCerts
	if c.String("acme-email") != "" {
		if auto, err = newAutoCerts(ctx, c, log); err != nil {
			return service.Usage(err)
		}
		defer auto.close()
	}
	httpsCert, err := httpsKeyPair(c, auto != nil)
	if err != nil {
		return service.Usage(err)
	}
	var getHTTPSCert, getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	var resetSecret []byte
	var extraALPN []string
	if httpsCert != nil {
		getHTTPSCert = httpsCert.GetCertificate
	}
	if auto != nil {
		getCert, extraALPN = auto.own, []string{acmeTLS1}
		if getHTTPSCert == nil {
			getHTTPSCert = auto.https
		}
		if resetSecret, err = auto.resetSecret(); err != nil {
			return err
		}
	}
	trusted, err := coordinator.ParseTrustedProxies(c.StringSlice("trusted-proxies"))
	if err != nil {
		return fmt.Errorf("--trusted-proxies: %w", err)
	}
	cluster, err := clusterConfig(c)
	if err != nil {
		return err
	}
	coord, err := coordinator.New(coordinator.Config{
		HTTPListen:           c.String("http"),
		HTTPSListen:          c.String("https"),
		HTTPSCertificate:     getHTTPSCert,
		HTTPSOnDemand:        auto != nil && httpsCert == nil,
		GetCertificate:       getCert,
		ResetSecret:          resetSecret,
		ExtraALPN:            extraALPN,
		HTTPToHTTPS:          c.Bool("http-to-https"),
		Domain:               c.String("domain"),
		PortRange:            ports,
		PublicBind:           c.String("public-bind"),
		ListNames:            c.Bool("list-names"),
		TrustedProxies:       trusted,
		NameGrace:            nameGrace(c.Duration("name-grace")),
		StateFile:            stateFile(c),
		Listen:               c.String("listen"),
		TCPListen:            c.String("tcp-listen"),
		Certificate:          cert,
		Token:                c.String("token"),
		Tokens:               tokens,
		ClientCAs:            clientCAs,
		ReporterListen:       c.String("reporter-listen"),
		ReporterKeepAlive:    time.Duration(reporterKeepAlive) * time.Millisecond,
		TargetDialTimeout:    c.Duration("target-dial-timeout"),
		DialBackTimeout:      c.Duration("dial-back-timeout"),
		WorkerToken:          c.String("worker-token"),
		ShutdownTimeout:      c.Duration("shutdown-timeout"),
		MaxSessionsPerClient: c.Int("max-sessions-per-client"),
		MaxClients:           c.Int("max-clients"),
		Handshakes:           handshakeLimits(c),
		MaxPublicConns:       c.Int("max-public-conns"),
		BodyReadTimeout:      c.Duration("body-read-timeout"),
		QlogDir:              qlogDir,
		Targets:              targetPolicy(c),
		Cluster:              cluster,
		Logger:               log,
		AccessLog:            accessLog,
	})
	if err != nil {
		return settingError(err, fieldFlags)
	}
	if auto != nil {
		auto.setPublished(coord.Published)
		if err := auto.start(); err != nil {
			return err
		}
	}
	stopReload := reloadOnHUP(ctx, log, coord, c.String("tokens"), httpsCert)
	defer stopReload()
	return metrics.RunWith(ctx, c.String("metrics-listen"), c.Bool("pprof"), log, coord.RegisterMetrics, coord.Run)
}

// fieldFlags names the flags that set the fields of coordinator's and the
// dial-back worker's Configs (and of quictun's and httpproxy's beneath).
var fieldFlags = service.FieldFlags{
	"Token": "token", "Coordinator": "coordinator", "Advertise": "advertise",
	"TargetPolicy.Allow": "allow-target", "TargetPolicy.DenyPorts": "deny-port",
	"MaxSessionsPerClient": "max-sessions-per-client", "MaxClients": "max-clients",
	"MaxConns":          "max-public-conns",
	"Cluster.Endpoints": "cluster-etcd", "Cluster.NodeID": "node-id", "Cluster.Listen": "cluster-listen",
	"Cluster.Advertise": "cluster-advertise", "Cluster.Token": "cluster-token", "Cluster.LeaseTTL": "cluster-lease",
}

// workerFieldFlags is fieldFlags for --role dialback.
var workerFieldFlags = service.FieldFlags{
	"Token": "worker-token", "Coordinator": "coordinator", "Advertise": "advertise",
	"TargetPolicy.Allow": "allow-target", "TargetPolicy.DenyPorts": "deny-port",
}

// settingError reports the packages' configuration errors as the flags
// that set the fields; other errors (a busy port) are returned as they are.
func settingError(err error, fieldFlags service.FieldFlags) error {
	if e, ok := errors.AsType[*coordinator.ConfigError](err); ok {
		return fieldFlags.Setting(e.Field, e.Reason, err)
	}
	if e, ok := errors.AsType[*quictun.ConfigError](err); ok {
		return fieldFlags.Setting(e.Field, e.Reason, err)
	}
	if e, ok := errors.AsType[*httpproxy.ConfigError](err); ok {
		return fieldFlags.Setting(e.Field, e.Reason, err)
	}
	return err
}

// nameGrace maps --name-grace to Config.NameGrace, where 0 is the default.
func nameGrace(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// stateFile is --state-file, or by default a file in the state directory
// systemd gives the service (StateDirectory=).
func stateFile(c *cli.Context) string {
	if c.IsSet("state-file") {
		return c.String("state-file")
	}
	if dir, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); dir != "" {
		return filepath.Join(dir, "coordinator-names.json")
	}
	return ""
}

// loadClientCAs reads --client-ca; no file means no client certificates.
func loadClientCAs(path string) (*x509.CertPool, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read --client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("--client-ca %s: no PEM certificate found", path)
	}
	return pool, nil
}

// runWorker runs the dial-back part alone (--role dialback).
func runWorker(ctx context.Context, c *cli.Context, log, accessLog *slog.Logger, cert tls.Certificate, qlogDir string) error {
	if c.String("coordinator") == "" || c.String("worker-token") == "" {
		return &service.SettingError{Setting: "--role", Value: "dialback", Reason: "needs --coordinator HOST:PORT and --worker-token (the same as coordinator's)"}
	}
	roots, err := service.LoadRoots(c.String("ca"))
	if err != nil {
		return err
	}
	var advertise []netip.AddrPort
	for _, a := range c.StringSlice("advertise") {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return service.Usage(fmt.Errorf("--advertise %q: want ip:port: %w", a, err))
		}
		advertise = append(advertise, ap)
	}
	w, err := coordinator.NewWorker(coordinator.WorkerConfig{
		Listen:            c.String("listen"),
		Coordinator:       c.String("coordinator"),
		Token:             c.String("worker-token"),
		Certificate:       cert,
		RootCAs:           roots,
		ServerName:        c.String("server-name"),
		Advertise:         advertise,
		TargetDialTimeout: c.Duration("target-dial-timeout"),
		Targets:           targetPolicy(c),
		ShutdownTimeout:   c.Duration("shutdown-timeout"),
		QlogDir:           qlogDir,
		Logger:            log,
		AccessLog:         accessLog,
	})
	if err != nil {
		return settingError(err, workerFieldFlags)
	}
	return metrics.RunWith(ctx, c.String("metrics-listen"), c.Bool("pprof"), log, w.RegisterMetrics, w.Run)
}

// httpsKeyPair loads --https-cert/--https-key (default --cert/--key) when
// --https is set, and nil otherwise; with automatic certificates (acme),
// nil unless --https-cert is set.
func httpsKeyPair(c *cli.Context, acme bool) (*service.KeyPair, error) {
	if c.String("https") == "" {
		if c.String("https-cert") != "" || c.String("https-key") != "" {
			return nil, fmt.Errorf("--https-cert and --https-key need --https ADDRESS")
		}
		return nil, nil
	}
	cert, key := c.String("https-cert"), c.String("https-key")
	if (cert == "") != (key == "") {
		return nil, fmt.Errorf("set both --https-cert and --https-key, or neither (then --cert and --key serve HTTPS too)")
	}
	if cert == "" && acme {
		return nil, nil
	}
	if cert == "" {
		cert, key = c.String("cert"), c.String("key")
	}
	k, err := service.LoadKeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("--https certificate: %w", err)
	}
	return k, nil
}

// reloadOnHUP re-reads the tokens file and the HTTPS certificate (either
// may be absent) on each SIGHUP until ctx ends or the returned stop is
// called: revoked clients are disconnected; a bad file keeps what is in
// force.
func reloadOnHUP(ctx context.Context, log *slog.Logger, coord *coordinator.Coordinator, path string, httpsCert *service.KeyPair) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			if path == "" && httpsCert == nil {
				log.Warn("SIGHUP ignored: there is no --tokens file or --https certificate to reload")
				continue
			}
			if httpsCert != nil {
				if err := httpsCert.Reload(); err != nil {
					log.Error("HTTPS certificate not reloaded: the one in use stays", "err", err)
				} else {
					log.Info("HTTPS certificate reloaded", "file", httpsCert.CertFile())
				}
			}
			if path == "" {
				continue
			}
			n, err := coord.ReloadTokensFile(path)
			if err != nil {
				log.Error("tokens file not reloaded", "file", path, "err", err)
				continue
			}
			log.Info("tokens file reloaded", "file", path, "clients_disconnected", n)
		}
	})
	return func() {
		signal.Stop(hup)
		cancel()
		wg.Wait()
	}
}

// targetPolicy is the target policy the flags give, for coordinator and
// its dial-back workers alike.
func targetPolicy(c *cli.Context) coordinator.TargetPolicy {
	return coordinator.TargetPolicy{
		AllowPrivate: c.Bool("allow-private-targets"),
		Allow:        c.StringSlice("allow-target"),
		OnlyAllowed:  c.Bool("only-allowed-targets"),
		DenyPorts:    c.IntSlice("deny-port"),
		DNSCacheTTL:  dnsCacheTTL(c.Duration("dns-cache-ttl")),
	}
}

// dnsCacheTTL maps the flag's 0 ("no cache") to TargetPolicy's negative.
func dnsCacheTTL(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// handshakeLimits maps the --max-handshakes flags.
func handshakeLimits(c *cli.Context) quictun.HandshakeLimits {
	return quictun.HandshakeLimits{RetryAbove: c.Int("retry-above-handshakes"),
		Max: c.Int("max-handshakes"), MaxPerSource: c.Int("max-handshakes-per-source")}
}

// clusterConfig maps the --cluster-* flags; without --cluster-etcd, none.
func clusterConfig(c *cli.Context) (coordinator.ClusterConfig, error) {
	var endpoints []string
	for _, e := range c.StringSlice("cluster-etcd") {
		for _, u := range strings.Split(e, ",") {
			if u = strings.TrimSpace(u); u != "" {
				endpoints = append(endpoints, u)
			}
		}
	}
	if len(endpoints) == 0 {
		return coordinator.ClusterConfig{}, nil
	}
	token := c.String("cluster-token")
	if path := c.String("cluster-token-file"); path != "" {
		if token != "" {
			return coordinator.ClusterConfig{}, &service.SettingError{Setting: "--cluster-token-file", Reason: "set --cluster-token or --cluster-token-file, not both"}
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return coordinator.ClusterConfig{}, service.Usage(fmt.Errorf("--cluster-token-file: %w", err))
		}
		token = strings.TrimSpace(string(b))
	}
	return coordinator.ClusterConfig{Endpoints: endpoints, NodeID: c.String("node-id"), Listen: c.String("cluster-listen"),
		Advertise: c.String("cluster-advertise"), Token: token, LeaseTTL: c.Duration("cluster-lease")}, nil
}

// clusterStatus is "coordinator cluster status": it reads the registry in
// etcd, as --cluster-etcd (given before "cluster", or from the
// environment or --config) names it.
func clusterStatus(c *cli.Context) error {
	if c.Args().First() != "status" || c.NArg() != 1 {
		return service.Usage(fmt.Errorf("want: coordinator cluster status"))
	}
	parent := c
	if len(c.Lineage()) > 1 {
		parent = c.Lineage()[1]
	}
	cfg, err := clusterConfig(parent)
	if err != nil {
		return err
	}
	if len(cfg.Endpoints) == 0 {
		return &service.SettingError{Setting: "--cluster-etcd", Reason: "required: the cluster's etcd URL(s)"}
	}
	st, err := coordinator.ReadClusterStatus(c.Context, cfg.Endpoints, "")
	if err != nil {
		return err
	}
	if c.Bool("json") {
		b, err := st.MarshalIndent()
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "%s\n", b)
		return nil
	}
	st.WriteText(c.App.Writer, time.Now())
	return nil
}
