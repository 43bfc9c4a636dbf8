package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"quictunnel/internal/dnshook"
	"quictunnel/internal/service"
)

// acmeOrderBurst and acmeOrderEvery bound the certificates coordinator
// orders on demand for --https: a burst, then one per interval, so that a
// client publishing and withdrawing names cannot run the CA's rate limits
// down.
const (
	acmeOrderBurst = 10
	acmeOrderEvery = 6 * time.Minute
)

// autoCerts obtains and renews coordinator's certificates from an ACME CA
// (--acme-email): the one of its own name, for QUIC and --tcp-listen, and
// for --https one per published name on demand, or with a DNS-01 setup
// (--acme-dns-hook) one wildcard.
type autoCerts struct {
	cfg     *certmagic.Config // the own name's
	demand  *certmagic.Config // --https's: on demand, or the wildcard's
	wild    string            // *.DOMAIN with DNS-01 and --https, else ""
	cache   *certmagic.Cache
	name    string
	ca      string
	dir     string
	log     *slog.Logger
	limit   *orderLimit
	ctx     context.Context // until close
	cancel  context.CancelFunc
	mu      sync.Mutex
	failed  map[string]string // name -> reason of its last failure, logged once
	publish func(host string) bool
}

// newAutoCerts configures the ACME client from the flags. setPublished
// then says which names --https may get a certificate for, and start
// obtains the own name's.
func newAutoCerts(ctx context.Context, c *cli.Context, log *slog.Logger) (*autoCerts, error) {
	name := c.String("acme-name")
	if name == "" {
		name = c.String("domain")
	}
	if name == "" || net.ParseIP(name) != nil || !strings.Contains(name, ".") {
		return nil, fmt.Errorf("--acme-name %q: want coordinator's public DNS name (default: --domain)", name)
	}
	dir := acmeDir(c)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("--acme-dir: %w", err)
	}
	a := &autoCerts{name: name, dir: dir, log: log, ca: c.String("acme-ca"),
		limit: newOrderLimit(acmeOrderBurst, acmeOrderEvery), failed: map[string]string{}}
	quiet := zap.NewNop()
	a.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(cert certmagic.Certificate) (*certmagic.Config, error) {
			if slices.Contains(cert.Names, a.name) {
				return a.cfg, nil
			}
			return a.demand, nil
		},
		RenewCheckInterval: c.Duration("acme-renew-check"),
		Logger:             quiet,
	})
	issuer := certmagic.ACMEIssuer{
		CA: c.String("acme-ca"), Email: c.String("acme-email"), Agreed: true,
		// The CA proves control of a name over TLS (TLS-ALPN-01, port
		// 443): on the --https or --tcp-listen listener, which answer
		// acme-tls/1, or on a listener of certmagic's own while port 443
		// is free.
		DisableHTTPChallenge: true,
		Logger:               quiet,
	}
	if host, port, ok := tlsALPNListener(c); ok {
		issuer.ListenHost, issuer.AltTLSALPNPort = host, port
	}
	var onDemand *certmagic.OnDemandConfig
	if hook := c.String("acme-dns-hook"); hook != "" {
		// With DNS-01 (then certmagic uses no other challenge) the CA
		// need not reach coordinator, and --https gets one wildcard.
		solver, err := dnshook.New(dnshook.Config{Path: hook, Resolvers: c.StringSlice("acme-dns-resolvers"), Logger: log})
		if err != nil {
			return nil, fmt.Errorf("--acme-dns-hook: %w", err)
		}
		issuer.DNS01Solver = solver
		if c.String("https") != "" && c.String("https-cert") == "" {
			if err := checkWildcardDomain(c.String("domain")); err != nil {
				return nil, err
			}
			a.wild = "*." + c.String("domain")
		}
	} else {
		onDemand = &certmagic.OnDemandConfig{DecisionFunc: a.decide}
	}
	// Two configurations on one cache and one directory: the own name's,
	// managed from the start, and --https's, on demand or the wildcard
	// managed from the start.
	newConfig := func(onDemand *certmagic.OnDemandConfig) *certmagic.Config {
		cfg := certmagic.New(a.cache, certmagic.Config{
			Storage:           &certmagic.FileStorage{Path: dir},
			DefaultServerName: name,
			OnEvent:           a.event,
			OnDemand:          onDemand,
			Logger:            quiet,
		})
		cfg.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(cfg, issuer)}
		return cfg
	}
	a.cfg = newConfig(nil)
	a.demand = newConfig(onDemand)
	a.ctx, a.cancel = context.WithCancel(ctx)
	return a, nil
}

// checkWildcardDomain checks --domain can have a wildcard certificate
// (CAs refuse one right under a top-level name such as *.localhost).
func checkWildcardDomain(d string) error {
	if !strings.Contains(d, ".") || net.ParseIP(d) != nil {
		return &service.SettingError{Setting: "--domain", Value: d, Reason: "the wildcard *.DOMAIN --acme-dns-hook obtains for --https needs a DNS name under a registered domain"}
	}
	return nil
}

// start begins obtaining (or loading from --acme-dir) the certificate of
// the own name and the wildcard, in the background, retrying with
// backoff. Call it once coordinator's listeners are bound: the TLS-ALPN-01
// challenge is answered on theirs.
func (a *autoCerts) start() error {
	if err := a.cfg.ManageAsync(a.ctx, []string{a.name}); err != nil {
		return fmt.Errorf("ACME certificate for %s: %w", a.name, err)
	}
	if a.wild == "" {
		return nil
	}
	if err := a.demand.ManageAsync(a.ctx, []string{a.wild}); err != nil {
		return fmt.Errorf("ACME certificate for %s: %w", a.wild, err)
	}
	return nil
}

// acmeDir is --acme-dir, or by default a directory in the state directory
// systemd gives the service (StateDirectory=), else certmagic's default
// (in the user's data directory).
func acmeDir(c *cli.Context) string {
	if d := c.String("acme-dir"); d != "" {
		return d
	}
	if dir, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); dir != "" {
		return filepath.Join(dir, "acme")
	}
	return certmagic.Default.Storage.(*certmagic.FileStorage).Path
}

// tlsALPNListener is where coordinator answers TLS-ALPN-01 challenges
// itself: --https, else --tcp-listen.
func tlsALPNListener(c *cli.Context) (host string, port int, ok bool) {
	for _, flag := range []string{"https", "tcp-listen"} {
		h, p, err := net.SplitHostPort(c.String(flag))
		if err != nil {
			continue
		}
		if n, err := strconv.Atoi(p); err == nil && n > 0 {
			return h, n, true
		}
	}
	return "", 0, false
}

// setPublished sets which names --https may get certificates for.
func (a *autoCerts) setPublished(f func(host string) bool) {
	a.mu.Lock()
	a.publish = f
	a.mu.Unlock()
}

// decide is certmagic's on-demand decision: a certificate only for a
// name published now, and within the order rate limit.
func (a *autoCerts) decide(_ context.Context, name string) error {
	a.mu.Lock()
	publish := a.publish
	a.mu.Unlock()
	if publish == nil || !publish(name) {
		return fmt.Errorf("%s: no app is published under this name", name)
	}
	if !a.limit.allow(time.Now()) {
		a.log.Warn("ACME: certificate for a published name not ordered: too many orders lately", "name", name)
		return fmt.Errorf("%s: ACME order rate limit", name)
	}
	return nil
}

// own gives coordinator's certificate, whatever name a client asks for
// (QUIC, --tcp-listen); a CA's TLS-ALPN-01 challenge gets its answer.
func (a *autoCerts) own(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if slices.Contains(hello.SupportedProtos, acmeTLS1) {
		return a.cfg.GetCertificate(hello)
	}
	h := *hello
	h.ServerName = a.name
	return a.cfg.GetCertificate(&h)
}

// https gives --https's certificates: on demand, for published names, or
// the wildcard.
func (a *autoCerts) https(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return a.demand.GetCertificate(hello)
}

// acmeTLS1 is the ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
const acmeTLS1 = "acme-tls/1"

// event logs what certmagic does: each order, each certificate obtained
// or renewed, and a failure once per name and reason (certmagic retries
// with backoff; the certificate in use keeps serving).
func (a *autoCerts) event(_ context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	switch event {
	case "cert_obtaining":
		a.log.Info("ACME: ordering certificate", "name", name, "renewal", renewal)
	case "cert_obtained":
		a.mu.Lock()
		delete(a.failed, name)
		a.mu.Unlock()
		a.log.Info("ACME: certificate obtained", "name", name, "renewal", renewal, "dir", a.dir)
	case "cert_failed":
		err, _ := data["error"].(error)
		reason := fmt.Sprint(err)
		if p, ok := errors.AsType[acme.Problem](err); ok {
			reason = p.Error()
		}
		a.mu.Lock()
		repeated := a.failed[name] == reason
		a.failed[name] = reason
		a.mu.Unlock()
		if repeated {
			a.log.Debug("ACME: certificate not obtained again, retrying with backoff", "name", name, "renewal", renewal, "err", reason)
			break
		}
		a.log.Error("ACME: certificate not obtained, retrying with backoff (a certificate in use keeps serving)",
			"name", name, "renewal", renewal, "acme_ca", a.ca, "err", reason)
	}
	return nil
}

// resetSecret is the secret QUIC stateless reset keys derive from with
// automatic certificates (whose key changes with each renewal): random,
// made once and kept in --acme-dir.
func (a *autoCerts) resetSecret() ([]byte, error) {
	path := filepath.Join(a.dir, "stateless-reset-secret")
	if b, err := os.ReadFile(path); err == nil && len(b) >= 32 {
		return b, nil
	}
	b := make([]byte, 32)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("stateless reset secret: %w", err)
	}
	return b, nil
}

// close stops renewals and retries.
func (a *autoCerts) close() {
	a.cancel()
	a.cache.Stop()
}

// orderLimit is a token bucket: burst orders, then one per every.
type orderLimit struct {
	mu     sync.Mutex
	tokens float64
	burst  float64
	every  time.Duration
	last   time.Time
}

func newOrderLimit(burst int, every time.Duration) *orderLimit {
	return &orderLimit{tokens: float64(burst), burst: float64(burst), every: every}
}

// allow takes a token if there is one at now.
func (l *orderLimit) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+float64(now.Sub(l.last))/float64(l.every))
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}
