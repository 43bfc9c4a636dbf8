// Command localproxy runs on a computer behind NAT: an HTTP proxy for the
// browser whose connections reach the web through coordinator. One UDP
// socket carries STUN to the reporter, the control connection to
// coordinator and the tunnel creation service coordinator dials back to.
package main

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"

	"quictunnel/httpproxy"
	"quictunnel/internal/localproxy"
	"quictunnel/internal/metrics"
	"quictunnel/internal/service"
	"quictunnel/quictun"
)

func main() {
	os.Exit(service.Main(service.App{
		Name:  "localproxy",
		Usage: "HTTP proxy for your browser, tunnelled through coordinator over QUIC",
		Flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8118", EnvVars: []string{"LOCALPROXY_LISTEN"},
				Usage: "TCP address of the HTTP proxy for the browser"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "coordinator", EnvVars: []string{"LOCALPROXY_COORDINATOR"}, Required: true,
				Usage: "coordinator's QUIC address, host:port; or several, A,B,C (or one name with several addresses): connect to the nearest, fail over to another when it dies"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "transport", Value: "auto", EnvVars: []string{"LOCALPROXY_TRANSPORT"},
				Usage: "auto: QUIC, or TLS over TCP when QUIC has no handshake within 2s (UDP blocked); quic; tcp (coordinator needs --tcp-listen)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "coordinator-tcp", EnvVars: []string{"LOCALPROXY_COORDINATOR_TCP"},
				Usage: "coordinator's TCP transport, host:port, or one per --coordinator in the same order (default: --coordinator's host and port)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "upstream-proxy", EnvVars: []string{"LOCALPROXY_UPSTREAM_PROXY"},
				Usage: "reach coordinator's TCP transport through this HTTP proxy with CONNECT: http://[USER:PASSWORD@]HOST:PORT (default: $HTTPS_PROXY, minding $NO_PROXY)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "reporter", EnvVars: []string{"LOCALPROXY_REPORTER"},
				Usage: "STUN reporter address, host:port, to learn the public address (default: the coordinator's host, port 3478)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "token", EnvVars: []string{"LOCALPROXY_TOKEN"},
				Usage: "token coordinator expects (not needed with --client-cert)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "client-cert", EnvVars: []string{"LOCALPROXY_CLIENT_CERT"}, TakesFile: true,
				Usage: "PEM client certificate to present to a coordinator run with --client-ca (mutual TLS), with --client-key"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "client-key", EnvVars: []string{"LOCALPROXY_CLIENT_KEY"}, TakesFile: true,
				Usage: "PEM private key of --client-cert"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "ca", EnvVars: []string{"LOCALPROXY_CA"},
				Usage: "PEM file of a CA (or self-signed certificate) to trust for coordinator, instead of the system's CAs"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "server-name", EnvVars: []string{"LOCALPROXY_SERVER_NAME"},
				Usage: "name coordinator's certificate must carry (default: the host of --coordinator)"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "insecure", EnvVars: []string{"LOCALPROXY_INSECURE"},
				Usage: "accept any coordinator certificate (encrypted but NOT authenticated: anyone on the path can read your traffic)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "proxy-auth", EnvVars: []string{"LOCALPROXY_PROXY_AUTH"},
				Usage: "USER:PASSWORD browsers must give (Proxy-Authorization: Basic); required when --listen is not loopback"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "proxy-auth-file", EnvVars: []string{"LOCALPROXY_PROXY_AUTH_FILE"}, TakesFile: true,
				Usage: "file holding USER:PASSWORD, instead of --proxy-auth"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "insecure-no-proxy-auth", EnvVars: []string{"LOCALPROXY_INSECURE_NO_PROXY_AUTH"},
				Usage: "let the proxy listen beyond loopback without --proxy-auth (anyone who reaches it can use your tunnel)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "udp-listen", Value: ":0", EnvVars: []string{"LOCALPROXY_UDP_LISTEN"},
				Usage: "local UDP address of the tunnel socket (STUN, QUIC and dial-backs)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "name", EnvVars: []string{"LOCALPROXY_NAME"},
				Usage: "name of this client in coordinator's logs (default: the host name)"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "dial-back-timeout", Value: 10 * time.Second, EnvVars: []string{"LOCALPROXY_DIAL_BACK_TIMEOUT"},
				Usage: "how long a request waits for coordinator's dial-back before the browser gets 504"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "fast-open", EnvVars: []string{"LOCALPROXY_FAST_OPEN"},
				Usage: "answer CONNECT at once and send the browser's first bytes with the session's opening: one round trip less per connection, but an unreachable site closes the connection instead of showing a 502 page; sessions go over the connection to coordinator, without dial-back"}),
			service.QlogDirFlag("LOCALPROXY_"),
			altsrc.NewInt64Flag(&cli.Int64Flag{Name: "keepalive-interval", Value: 10000, EnvVars: []string{"LOCALPROXY_KEEPALIVE_INTERVAL", "NAT_KEEP_ALIVE_INTERVAL"},
				Usage: "milliseconds between keepalive packets on idle tunnel connections; keep it below the NAT's UDP timeout"}),
			altsrc.NewIntFlag(&cli.IntFlag{Name: "max-pending-sessions", Value: 10000, EnvVars: []string{"LOCALPROXY_MAX_PENDING_SESSIONS"},
				Usage: "most sessions waiting for their dial-back at once; requests beyond it get 503"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "stun-timeout", Value: 3 * time.Second, EnvVars: []string{"LOCALPROXY_STUN_TIMEOUT"},
				Usage: "how long to wait for the reporter's answer at start"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "expose", EnvVars: []string{"LOCALPROXY_EXPOSE"},
				Usage: "expose a local HTTP app as NAME.DOMAIN on coordinator's public HTTP port: NAME=HOST:PORT[:PUBLICPORT] (repeatable)"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "host-header", EnvVars: []string{"LOCALPROXY_HOST_HEADER"},
				Usage: "the Host header an --expose'd app receives: NAME=rewrite (the app's own HOST:PORT, for dev servers that refuse other names) or NAME=HOST[:PORT] (repeatable)"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "basic-auth", EnvVars: []string{"LOCALPROXY_BASIC_AUTH"},
				Usage: "ask the public for a user name and password before a request reaches an --expose'd app: NAME=USER:PASSWORD (repeatable; only hashes leave this machine; prefer the environment or --config to the command line, which other local users can read)"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "allow-from", EnvVars: []string{"LOCALPROXY_ALLOW_FROM"},
				Usage: "only public clients from these networks reach an exposed app or TCP service; coordinator refuses the others: NAME=CIDR[,CIDR...] (repeatable)"}),
			altsrc.NewStringSliceFlag(&cli.StringSliceFlag{Name: "expose-tcp", EnvVars: []string{"LOCALPROXY_EXPOSE_TCP"},
				Usage: "expose a local TCP service on a public port of coordinator: NAME=HOST:PORT:PUBLICPORT, 0 lets coordinator choose (repeatable)"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "log-public-requests", EnvVars: []string{"LOCALPROXY_LOG_PUBLIC_REQUESTS"},
				Usage: "log every public request to the --expose'd apps (method, path, status, bytes, duration, the public client), as coordinator relayed it; costs some CPU on both sides at high request rates"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "ui", Value: true, EnvVars: []string{"LOCALPROXY_UI"},
				Usage: "serve the inspector page (requests both ways, live; state; replay) at http://LISTEN/ui/ (--ui=false: off)"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "ui-listen", EnvVars: []string{"LOCALPROXY_UI_LISTEN"},
				Usage: "serve the inspector page on its own TCP address instead (beyond loopback it asks for the --proxy-auth credentials)"}),
			altsrc.NewIntFlag(&cli.IntFlag{Name: "ui-history", Value: 500, EnvVars: []string{"LOCALPROXY_UI_HISTORY"},
				Usage: "how many requests the inspector page keeps"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"LOCALPROXY_METRICS_LISTEN"},
				Usage: "serve Prometheus metrics at /metrics and a health check at /healthz on this TCP address (e.g. 127.0.0.1:9100)"}),
			altsrc.NewBoolFlag(&cli.BoolFlag{Name: "pprof", EnvVars: []string{"LOCALPROXY_PPROF"},
				Usage: "also serve Go profiling at /debug/pprof/ on --metrics-listen"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "idle-restart", Value: time.Minute, EnvVars: []string{"LOCALPROXY_IDLE_RESTART"},
				Usage: "this long after a session last opened or closed, re-run the startup workflow: ask the reporter for the public address, make sure the tunnel creation service serves, tell coordinator the address; while sessions are open the reporter is also asked every 5s (negative: never)"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "body-read-timeout", Value: 30 * time.Second, EnvVars: []string{"LOCALPROXY_BODY_READ_TIMEOUT"},
				Usage: "how long a browser request's body may stop arriving before the request is answered 408 and ended on every hop"}),
			altsrc.NewDurationFlag(&cli.DurationFlag{Name: "shutdown-timeout", Value: 10 * time.Second, EnvVars: []string{"LOCALPROXY_SHUTDOWN_TIMEOUT"},
				Usage: "on SIGTERM or SIGINT, how long requests and tunnels in progress may take to finish before they are closed"}),
			altsrc.NewStringFlag(&cli.StringFlag{Name: "access-log", EnvVars: []string{"LOCALPROXY_ACCESS_LOG"},
				Usage: "also write one line per request or tunnel to this file (format follows --log-format)"}),
		},
		Commands: []*cli.Command{{
			Name:  "status",
			Usage: "show the running localproxy's state: coordinator connection, public address, NAT, open sessions, exposed services",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "json", Usage: "print the raw JSON (also served at http://LISTEN/status)"},
				&cli.StringFlag{Name: "listen", Usage: "the proxy address of the localproxy to ask (default: localproxy's --listen, from flags before \"status\", the environment or --config)"},
			},
			Action: status,
		}},
		Check:       checkSettings,
		ListenFlags: []string{"listen", "udp-listen", "ui-listen", "metrics-listen"},
		Run:         run,
		// One person's traffic over one QUIC connection, which quic-go
		// handles on one goroutine: on two cores, the second mostly added
		// hand-offs between cores (docs/benchmarks.md: 20-25% more CPU
		// per GiB), and the browser needs cores too.
		Procs: service.HalfTheCores(),
	}, os.Args))
}

// status asks the localproxy listening on --listen for its state.
func status(c *cli.Context) error {
	proxyAuth, err := loadProxyAuth(c.String("proxy-auth"), c.String("proxy-auth-file"))
	if err != nil {
		return service.Usage(err)
	}
	addr := c.String("listen")
	if addr == "" && len(c.Lineage()) > 1 {
		addr = c.Lineage()[1].String("listen") // the service's --listen, with its default
	}
	if host, port, err := net.SplitHostPort(addr); err == nil && (host == "" || host == "0.0.0.0" || host == "::") {
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	req, err := http.NewRequestWithContext(c.Context, "GET", "http://"+addr+"/status", nil)
	if err != nil {
		return err
	}
	if proxyAuth != nil {
		req.Header.Set("Proxy-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(proxyAuth.User+":"+proxyAuth.Password)))
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("no localproxy answers on %s (is it running? give the same --listen or --config): %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read status from %s: %w", addr, err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusProxyAuthRequired:
		return fmt.Errorf("localproxy on %s wants proxy credentials: give the same --proxy-auth or --proxy-auth-file", addr)
	default:
		return fmt.Errorf("localproxy on %s answered %s", addr, resp.Status)
	}
	if c.Bool("json") {
		_, err := os.Stdout.Write(body)
		return err
	}
	var st localproxy.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status from %s: %w", addr, err)
	}
	fmt.Print(localproxy.FormatStatus(st))
	return nil
}

func run(ctx context.Context, c *cli.Context, log *slog.Logger) error {
	roots, err := service.LoadRoots(c.String("ca"))
	if err != nil {
		return err
	}
	keepalive := c.Int64("keepalive-interval")
	if keepalive <= 0 {
		return &service.SettingError{Setting: "--keepalive-interval", Value: strconv.FormatInt(keepalive, 10),
			Reason: "must be a positive number of milliseconds (also $NAT_KEEP_ALIVE_INTERVAL)"}
	}
	if c.Bool("insecure") {
		log.Warn("--insecure: coordinator's certificate is NOT verified; anyone on the path can impersonate it and read your traffic")
	}
	accessLog, closeLog, err := service.AccessLogger(log, c.String("access-log"), c.String("log-format"))
	if err != nil {
		return err
	}
	defer closeLog()
	proxyAuth, err := loadProxyAuth(c.String("proxy-auth"), c.String("proxy-auth-file"))
	if err != nil {
		return service.Usage(err)
	}
	var services []quictun.ExposedService
	for _, spec := range c.StringSlice("expose") {
		svc, err := localproxy.ParseExpose(spec, quictun.ServiceHTTP)
		if err != nil {
			return service.Usage(fmt.Errorf("--expose: %w", err))
		}
		services = append(services, svc)
	}
	for _, spec := range c.StringSlice("expose-tcp") {
		svc, err := localproxy.ParseExpose(spec, quictun.ServiceTCP)
		if err != nil {
			return service.Usage(fmt.Errorf("--expose-tcp: %w", err))
		}
		services = append(services, svc)
	}
	if err := localproxy.ApplyHostHeaders(services, c.StringSlice("host-header")); err != nil {
		return service.Usage(fmt.Errorf("--%w", err))
	}
	if err := localproxy.ApplyBasicAuth(services, c.StringSlice("basic-auth")); err != nil {
		return service.Usage(fmt.Errorf("--%w", err))
	}
	if err := localproxy.ApplyAllowFrom(services, c.StringSlice("allow-from")); err != nil {
		return service.Usage(fmt.Errorf("--%w", err))
	}
	var clientCert *tls.Certificate
	switch certFile, keyFile := c.String("client-cert"), c.String("client-key"); {
	case certFile != "" && keyFile != "":
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return service.Usage(fmt.Errorf("load --client-cert/--client-key: %w", err))
		}
		clientCert = &cert
	case certFile != "" || keyFile != "":
		return &service.SettingError{Setting: "--client-cert", Reason: "give --client-cert and --client-key together"}
	}
	if c.String("token") == "" && clientCert == nil {
		return &service.SettingError{Setting: "--token", Reason: "required: give --token, $LOCALPROXY_TOKEN or \"token:\" in the --config file " +
			"(or a client certificate: --client-cert and --client-key)"}
	}
	qlogDir, err := service.QlogDir(c, log)
	if err != nil {
		return err
	}
	p, err := localproxy.New(localproxy.Config{
		ClientCertificate:   clientCert,
		Services:            services,
		LogPublicRequests:   c.Bool("log-public-requests"),
		NoUI:                !c.Bool("ui"),
		UIListen:            c.String("ui-listen"),
		UIHistory:           c.Int("ui-history"),
		Listen:              c.String("listen"),
		UDPListen:           c.String("udp-listen"),
		Coordinator:         c.String("coordinator"),
		Transport:           c.String("transport"),
		CoordinatorTCP:      c.String("coordinator-tcp"),
		UpstreamProxy:       c.String("upstream-proxy"),
		UpstreamFromEnv:     true,
		Reporter:            c.String("reporter"),
		Token:               c.String("token"),
		RootCAs:             roots,
		ServerName:          c.String("server-name"),
		Insecure:            c.Bool("insecure"),
		ProxyAuth:           proxyAuth,
		InsecureNoProxyAuth: c.Bool("insecure-no-proxy-auth"),
		Name:                c.String("name"),
		DialBackTimeout:     c.Duration("dial-back-timeout"),
		FastOpen:            c.Bool("fast-open"),
		QlogDir:             qlogDir,
		STUNTimeout:         c.Duration("stun-timeout"),
		KeepAlive:           time.Duration(keepalive) * time.Millisecond,
		IdleRestart:         c.Duration("idle-restart"),
		MaxPendingSessions:  c.Int("max-pending-sessions"),
		ShutdownTimeout:     c.Duration("shutdown-timeout"),
		BodyReadTimeout:     c.Duration("body-read-timeout"),
		Logger:              log,
		AccessLog:           accessLog,
	})
	if err != nil {
		return settingError(err)
	}
	return metrics.RunWith(ctx, c.String("metrics-listen"), c.Bool("pprof"), log, p.RegisterMetrics, p.Run)
}

// fieldFlags names the flags that set localproxy.Config's (and
// quictun.ClientConfig's) fields.
var fieldFlags = service.FieldFlags{
	"Coordinator": "coordinator", "Coordinators": "coordinator", "Token": "token", "Listen": "listen", "Name": "name", "UIListen": "ui-listen", "UIHistory": "ui-history",
	"Transport": "transport", "CoordinatorTCP": "coordinator-tcp", "UpstreamProxy": "upstream-proxy", "Reporter": "reporter",
	"DialBackTimeout": "dial-back-timeout", "MaxPendingSessions": "max-pending-sessions",
}

// settingError reports the packages' configuration errors as the flags
// that set the fields; other errors (a busy port) are returned as they are.
func settingError(err error) error {
	if e, ok := errors.AsType[*localproxy.ConfigError](err); ok {
		return fieldFlags.Setting(e.Field, e.Reason, err)
	}
	if e, ok := errors.AsType[*quictun.ConfigError](err); ok {
		if strings.HasPrefix(e.Field, "Services") {
			name := strings.TrimSuffix(strings.TrimPrefix(e.Field, "Services["), "]")
			return service.Usage(fmt.Errorf("--expose %s: %s", name, e.Reason))
		}
		return fieldFlags.Setting(e.Field, e.Reason, err)
	}
	return err
}

// loadProxyAuth reads --proxy-auth or --proxy-auth-file; neither means no
// proxy authentication.
func loadProxyAuth(value, file string) (*httpproxy.Credentials, error) {
	switch {
	case value != "" && file != "":
		return nil, fmt.Errorf("give --proxy-auth or --proxy-auth-file, not both")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read --proxy-auth-file: %w", err)
		}
		value = string(b)
	case value == "":
		return nil, nil
	}
	cred, err := httpproxy.ParseCredentials(value)
	if err != nil {
		return nil, fmt.Errorf("--proxy-auth: %w", err)
	}
	return &cred, nil
}
