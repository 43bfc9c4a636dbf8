package natlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// NATKind selects how the nat namespace maps LAN sockets to public ports.
type NATKind int

const (
	// EndpointIndependent is plain MASQUERADE: one public port per LAN
	// socket whatever the destination (the source port is kept when free),
	// with address-and-port-dependent filtering ("port-restricted cone").
	EndpointIndependent NATKind = iota
	// Symmetric is MASQUERADE --random-fully: a new random public port for
	// every destination, address-and-port-dependent filtering.
	Symmetric
)

// String returns the kind's name.
func (k NATKind) String() string {
	switch k {
	case EndpointIndependent:
		return "EndpointIndependent"
	case Symmetric:
		return "Symmetric"
	}
	return fmt.Sprintf("NATKind(%d)", int(k))
}

// IPv6Mode selects what the home router does with IPv6.
type IPv6Mode int

const (
	// IPv6None gives the client no IPv6 (it is disabled in its namespace).
	// Public hosts still have IPv6 addresses.
	IPv6None IPv6Mode = iota
	// IPv6NAT66 translates the LAN prefix 2001:db8:1::/64 to the NAT's WAN
	// address with ip6tables MASQUERADE (same NATKind as IPv4); the public
	// side has no route to the LAN prefix.
	IPv6NAT66
	// IPv6Firewall routes the LAN prefix without translation and filters
	// statefully: outbound and established/related traffic pass, new inbound
	// traffic is dropped.
	IPv6Firewall
)

// String returns the mode's name.
func (m IPv6Mode) String() string {
	switch m {
	case IPv6None:
		return "IPv6None"
	case IPv6NAT66:
		return "IPv6NAT66"
	case IPv6Firewall:
		return "IPv6Firewall"
	}
	return fmt.Sprintf("IPv6Mode(%d)", int(m))
}

// MaxPublicHosts bounds Options.PublicHosts (public host i gets the address
// 10*i in its segment).
const MaxPublicHosts = 20

// Options configure a Lab. The zero value is a valid IPv4-only lab with an
// endpoint-independent NAT and four public hosts.
type Options struct {
	// NAT is the IPv4 (and NAT66) mapping behaviour. Default
	// EndpointIndependent.
	NAT NATKind
	// IPv6 is what the router does with IPv6. Default IPv6None.
	IPv6 IPv6Mode
	// PublicHosts is the number of public hosts, 1..MaxPublicHosts.
	// Default (0) 4.
	PublicHosts int
	// UDPTimeout sets the nat namespace's nf_conntrack_udp_timeout and
	// nf_conntrack_udp_timeout_stream, rounded up to whole seconds. Default
	// (0) keeps the kernel's defaults (30 s and 120 s on Linux 6.x).
	UDPTimeout time.Duration
}

func (o *Options) validate() error {
	switch {
	case o.NAT != EndpointIndependent && o.NAT != Symmetric:
		return &ConfigError{Field: "NAT", Reason: fmt.Sprintf("unknown kind %d", int(o.NAT))}
	case o.IPv6 < IPv6None || o.IPv6 > IPv6Firewall:
		return &ConfigError{Field: "IPv6", Reason: fmt.Sprintf("unknown mode %d", int(o.IPv6))}
	case o.PublicHosts < 0 || o.PublicHosts > MaxPublicHosts:
		return &ConfigError{Field: "PublicHosts", Reason: fmt.Sprintf("%d not in 0..%d", o.PublicHosts, MaxPublicHosts)}
	case o.UDPTimeout < 0:
		return &ConfigError{Field: "UDPTimeout", Reason: "negative"}
	}
	if o.PublicHosts == 0 {
		o.PublicHosts = 4
	}
	return nil
}

// Lab is one NAT lab. Its methods are safe for concurrent use.
type Lab struct {
	opts   Options
	prefix string // namespace name prefix, "qlab-<pid>-<n>-"
	tools  tools

	client, nat, internet *Host
	public                []*Host

	mu      sync.Mutex
	created []string // namespaces created so far, in order
	removed map[string]bool
	closers map[string][]io.Closer // sockets per namespace

	udpDefault [2]string // kernel's udp_timeout, udp_timeout_stream
}

// labCounter numbers labs within this process so prefixes never collide.
var labCounter atomic.Uint64

// sweepOnce makes New sweep stale namespaces once per process.
var sweepOnce sync.Once

// New builds a lab and registers its removal with t.Cleanup. It skips the
// test when the machine cannot run a lab (not root, commands missing), but
// fails it when the environment variable CI is set, so CI never silently
// skips the NAT tests.
func New(t testing.TB, o Options) *Lab {
	t.Helper()
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	tl, err := findTools()
	if err != nil {
		unavailable(t, err)
	}
	sweepOnce.Do(func() {
		if err := Sweep(); err != nil {
			t.Logf("natlab: sweeping stale namespaces: %v", err)
		}
	})
	l := &Lab{
		opts:    o,
		prefix:  fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), labCounter.Add(1)),
		tools:   tl,
		removed: make(map[string]bool),
		closers: make(map[string][]io.Closer),
	}
	t.Cleanup(func() { l.cleanup(t) })
	if err := l.build(t.Context()); err != nil {
		if errors.Is(err, ErrUnavailable) {
			unavailable(t, err)
		}
		t.Fatalf("natlab: building lab %s: %v", l.prefix, err)
	}
	return l
}

func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%v (CI is set, so this is a failure; run scripts/test-deps.sh as root)", err)
	}
	t.Skipf("%v (needs root and iproute2, iptables, conntrack; see docs/natlab.md)", err)
}

// Client is the host on the private LAN behind the NAT.
func (l *Lab) Client() *Host { return l.client }

// NAT is the home router. Its IPv4 and IPv6 fields are the WAN addresses.
func (l *Lab) NAT() *Host { return l.nat }

// Internet is the router joining the public segments.
func (l *Lab) Internet() *Host { return l.internet }

// Public returns public host i, 1-based like its name ("pub1" is Public(1)).
// It panics when i is out of range.
func (l *Lab) Public(i int) *Host {
	if i < 1 || i > len(l.public) {
		panic(fmt.Sprintf("natlab: Public(%d): lab has public hosts 1..%d", i, len(l.public)))
	}
	return l.public[i-1]
}

// PublicHosts returns all public hosts, pub1 first.
func (l *Lab) PublicHosts() []*Host { return slices.Clone(l.public) }

// WANAddr is the NAT's public IPv4 address, the address public hosts see
// the client's IPv4 traffic come from.
func (l *Lab) WANAddr() netip.Addr { return l.nat.IPv4 }

// WANAddr6 is the NAT's public IPv6 address (invalid with IPv6None); with
// IPv6NAT66 public hosts see the client's IPv6 traffic come from it.
func (l *Lab) WANAddr6() netip.Addr { return l.nat.IPv6 }

// Prefix is the namespace name prefix of this lab, unique per process and
// lab ("qlab-<pid>-<n>-").
func (l *Lab) Prefix() string { return l.prefix }

// RemoveHost deletes h's namespace mid-test, as if the machine went away:
// its processes are killed, the sockets opened through it are closed and its
// links disappear (so the peer side of each link goes down too).
func (l *Lab) RemoveHost(h *Host) error {
	l.mu.Lock()
	if l.removed[h.NS] {
		l.mu.Unlock()
		return fmt.Errorf("remove %s: %w", h.Name, ErrHostRemoved)
	}
	l.removed[h.NS] = true
	cs := l.closers[h.NS]
	delete(l.closers, h.NS)
	l.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	return l.tools.removeNS(ctx, h.NS)
}

// isRemoved reports whether ns was removed.
func (l *Lab) isRemoved(ns string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.removed[ns]
}

// track registers a socket opened in ns to be closed when ns goes away. It
// fails if ns is already removed.
func (l *Lab) track(ns string, c io.Closer) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.removed[ns] {
		return ErrHostRemoved
	}
	l.closers[ns] = append(l.closers[ns], c)
	return nil
}

// cleanupTimeout bounds the removal of one lab.
const cleanupTimeout = 30 * time.Second

// cleanup closes the sockets and removes every namespace the lab created;
// it runs from t.Cleanup, also after a failure or panic.
func (l *Lab) cleanup(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if t.Failed() && l.nat != nil && !l.isRemoved(l.nat.NS) {
		t.Logf("natlab %s: NAT state at failure:\n%s", l.prefix, l.diagnostics(ctx))
	}
	l.mu.Lock()
	created := slices.Clone(l.created)
	for ns := range l.removed {
		created = slices.DeleteFunc(created, func(s string) bool { return s == ns })
	}
	for _, ns := range created {
		l.removed[ns] = true
	}
	var closers []io.Closer
	for _, cs := range l.closers {
		closers = append(closers, cs...)
	}
	clear(l.closers)
	l.mu.Unlock()
	for _, c := range closers {
		_ = c.Close()
	}
	var errs []error
	for _, ns := range slices.Backward(created) {
		if err := l.tools.removeNS(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	left, err := listNS()
	if err != nil {
		errs = append(errs, err)
	}
	for _, ns := range left {
		if strings.HasPrefix(ns, l.prefix) {
			errs = append(errs, fmt.Errorf("namespace %s still exists", ns))
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("natlab %s: cleanup: %v", l.prefix, err)
	}
}
