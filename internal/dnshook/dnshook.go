// Package dnshook solves ACME DNS-01 challenges with a program the
// operator gives, the hook, so that coordinator needs no code for any DNS
// provider's API (like lego's "exec" provider and acme.sh's DNS hooks).
//
// The hook is run, without a shell, as
//
//	HOOK present FQDN VALUE
//	HOOK cleanup FQDN VALUE
//
// FQDN is the absolute name of the TXT record with a trailing dot
// (_acme-challenge.example.org.) and VALUE its text. present adds the
// record beside any others of that name (a wildcard and its apex share
// one name); cleanup removes the record with that value, and succeeds when
// it is not there. The hook also gets the arguments in its environment, as
// ACME_DNS_ACTION, ACME_DNS_FQDN, ACME_DNS_VALUE, and the name being
// validated (example.org for *.example.org) as ACME_DNS_DOMAIN, besides
// coordinator's own environment (where credentials can come from). Exit
// status 0 means done; any other is a failure whose stderr is reported in
// the HookError. Each call is killed, with the processes it started, after
// Config.Timeout. Calls for different names may run at the same time.
//
// Exit 0 from present should mean the record is served. Where it is not at
// once (a provider's API that publishes later, secondaries), Resolvers
// names DNS servers Wait asks until they serve it.
//
// Solver is an acmez.Solver of its own rather than a libdns provider
// behind certmagic's DNS01Solver, which first looks up each name's zone
// with SOA queries: a hook takes the full name and needs no zone, and the
// lookup would fail where the system's resolver cannot see the zone.
package dnshook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

var (
	_ acmez.Solver = (*Solver)(nil)
	_ acmez.Waiter = (*Solver)(nil)
)

// Defaults of Config's durations.
const (
	DefaultTimeout            = time.Minute
	DefaultPropagationTimeout = 2 * time.Minute
)

// pollInterval is how often Wait asks the resolvers again.
const pollInterval = time.Second

// maxStderr bounds the stderr a HookError keeps (its end).
const maxStderr = 1024

// Config configures a Solver.
type Config struct {
	// Path is the hook, an executable file. Required.
	Path string
	// Timeout bounds each call of the hook. Zero means DefaultTimeout.
	Timeout time.Duration
	// Resolvers are DNS servers (host or host:port, port 53 by default)
	// that Wait asks for the TXT record after present until each serves
	// it. Empty: no check; the hook's exit 0 means the record is served.
	Resolvers []string
	// PropagationTimeout bounds Wait. Zero means
	// DefaultPropagationTimeout.
	PropagationTimeout time.Duration
	// Logger logs each call at debug level; nil discards.
	Logger *slog.Logger
}

// Solver is an acmez.Solver (with Wait, an acmez.Waiter) for DNS-01
// challenges that runs the hook; certmagic takes it as
// ACMEIssuer.DNS01Solver.
type Solver struct {
	cfg Config
	log *slog.Logger
}

// New checks cfg and returns its Solver.
func New(cfg Config) (*Solver, error) {
	if err := CheckPath(cfg.Path); err != nil {
		return nil, &ConfigError{Field: "Path", Reason: err.Error()}
	}
	if cfg.Timeout < 0 || cfg.PropagationTimeout < 0 {
		return nil, &ConfigError{Field: "Timeout", Reason: "must not be negative"}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.PropagationTimeout == 0 {
		cfg.PropagationTimeout = DefaultPropagationTimeout
	}
	resolvers := make([]string, 0, len(cfg.Resolvers))
	for _, r := range cfg.Resolvers {
		addr, err := resolverAddr(r)
		if err != nil {
			return nil, &ConfigError{Field: "Resolvers", Reason: err.Error()}
		}
		resolvers = append(resolvers, addr)
	}
	cfg.Resolvers = resolvers
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Solver{cfg: cfg, log: log}, nil
}

// CheckPath checks that path names an executable regular file.
func CheckPath(path string) error {
	if path == "" {
		return errors.New("required")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s: not executable (chmod +x)", path)
	}
	return nil
}

// resolverAddr is a resolver, host or host:port, as host:port.
func resolverAddr(r string) (string, error) {
	host, port, err := net.SplitHostPort(r)
	if err != nil {
		host, port = strings.Trim(r, "[]"), "53"
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" || strings.ContainsAny(host, " /") {
		return "", fmt.Errorf("%q: want host or host:port", r)
	}
	return net.JoinHostPort(host, port), nil
}

// Present runs the hook to add the challenge's TXT record.
func (s *Solver) Present(ctx context.Context, chal acme.Challenge) error {
	return s.run(ctx, "present", chal)
}

// CleanUp runs the hook to remove the challenge's TXT record. It runs to
// its timeout even when ctx is cancelled: the record should go.
func (s *Solver) CleanUp(ctx context.Context, chal acme.Challenge) error {
	return s.run(context.WithoutCancel(ctx), "cleanup", chal)
}

// run runs the hook once for action.
func (s *Solver) run(ctx context.Context, action string, chal acme.Challenge) error {
	fqdn, value := fqdnOf(chal), chal.DNS01KeyAuthorization()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.cfg.Path, action, fqdn, value)
	cmd.Env = append(cmd.Environ(), "ACME_DNS_ACTION="+action, "ACME_DNS_FQDN="+fqdn,
		"ACME_DNS_VALUE="+value, "ACME_DNS_DOMAIN="+chal.Identifier.Value)
	// Its own process group, killed whole at the timeout: a script's
	// children (curl, nsupdate) go too and release stderr.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var stderr tailBuffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	s.log.Debug("ACME DNS-01 hook ran", "hook", s.cfg.Path, "action", action, "fqdn", fqdn,
		"took", time.Since(start), "err", err)
	if err == nil {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("killed after %s: %w", s.cfg.Timeout, ErrTimeout)
	}
	return &HookError{Path: s.cfg.Path, Action: action, FQDN: fqdn, Err: err, Stderr: stderr.String()}
}

// fqdnOf is the challenge's TXT record name, absolute.
func fqdnOf(chal acme.Challenge) string {
	name := chal.DNS01TXTRecordName()
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// tailBuffer keeps the last maxStderr bytes written to it.
type tailBuffer struct {
	b         []byte
	truncated bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if over := len(t.b) - maxStderr; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
		t.truncated = true
	}
	return len(p), nil
}

// String is what was kept, trimmed, with "..." first if it is not all.
func (t *tailBuffer) String() string {
	s := string(bytes.TrimSpace(t.b))
	if t.truncated {
		s = "..." + s
	}
	return s
}

// Wait waits until every resolver serves the challenge's TXT record, or
// returns at once without Resolvers.
func (s *Solver) Wait(ctx context.Context, chal acme.Challenge) error {
	if len(s.cfg.Resolvers) == 0 {
		return nil
	}
	fqdn, value := fqdnOf(chal), chal.DNS01KeyAuthorization()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.PropagationTimeout)
	defer cancel()
	for _, addr := range s.cfg.Resolvers {
		for {
			err := lookup(ctx, addr, fqdn, value)
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("DNS-01: TXT %s not served by %s within %s: %w", fqdn, addr, s.cfg.PropagationTimeout, err)
			case <-time.After(pollInterval):
			}
		}
	}
	return nil
}

// lookup asks the DNS server at addr for fqdn's TXT records; nil when one
// is value.
func lookup(ctx context.Context, addr, fqdn, value string) error {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	txts, err := r.LookupTXT(ctx, fqdn)
	if err != nil {
		return err
	}
	for _, t := range txts {
		if t == value {
			return nil
		}
	}
	return fmt.Errorf("%d other TXT records", len(txts))
}
