package quictun

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/quic-go/quic-go"
)

// HandshakeLimits bounds the QUIC connections a listener holds for peers
// not yet authenticated: from their first Initial packet until the peer is
// known (coordinator: a valid Hello; localproxy's tunnel creation service:
// coordinator's pinned certificate). quic-go keeps state and goroutines for
// every Initial it accepts, so without these anyone able to send UDP
// packets could fill memory. The zero value of a field selects its
// default.
type HandshakeLimits struct {
	// RetryAbove is how many unauthenticated connections may be pending
	// before a new connection attempt must first prove its source address
	// by answering a QUIC Retry (one more round trip, no state kept for
	// it): fake Initials from spoofed or one-shot senders then cost a
	// packet each, not a connection. Default 32; negative: always Retry.
	RetryAbove int
	// Max bounds unauthenticated connections pending at once; attempts
	// beyond it are refused (CONNECTION_REFUSED). Default 256.
	Max int
	// MaxPerSource bounds them per source IP address. Default 64.
	MaxPerSource int
}

// Defaults of HandshakeLimits.
const (
	DefaultRetryAbove             = 32
	DefaultMaxHandshakes          = 256
	DefaultMaxHandshakesPerSource = 64
)

func (l *HandshakeLimits) validate(field string) error {
	switch {
	case l.Max < 0:
		return &ConfigError{field + ".Max", "negative"}
	case l.MaxPerSource < 0:
		return &ConfigError{field + ".MaxPerSource", "negative"}
	}
	return nil
}

func (l *HandshakeLimits) setDefaults() {
	setDefault(&l.RetryAbove, DefaultRetryAbove)
	setDefault(&l.Max, DefaultMaxHandshakes)
	setDefault(&l.MaxPerSource, DefaultMaxHandshakesPerSource)
}

// handshakeGuard counts unauthenticated connections on a listener's
// transport and applies HandshakeLimits, through the transport's
// VerifySourceAddress and ConnContext hooks.
type handshakeGuard struct {
	limits HandshakeLimits
	log    *slog.Logger
	hits   *limitHits

	retries atomic.Int64 // attempts asked to answer a Retry
	once    sync.Once    // install

	mu       sync.Mutex
	pending  int
	bySource map[netip.Addr]int
}

func newHandshakeGuard(l HandshakeLimits, log *slog.Logger, hits *limitHits) *handshakeGuard {
	return &handshakeGuard{limits: l, log: log, hits: hits, bySource: make(map[netip.Addr]int)}
}

// handshakeSlot is one unauthenticated connection counted by a guard; the
// connection's context carries it.
type handshakeSlot struct {
	g    *handshakeGuard
	src  netip.Addr
	once sync.Once
}

type handshakeSlotKey struct{}

// install sets tr's VerifySourceAddress and ConnContext (keeping any the
// caller set, which run first), once. Call it before tr.Listen: quic-go
// reads them there.
func (g *handshakeGuard) install(tr *quic.Transport) {
	g.once.Do(func() { g.hook(tr) })
}

func (g *handshakeGuard) hook(tr *quic.Transport) {
	verify, connContext := tr.VerifySourceAddress, tr.ConnContext
	tr.VerifySourceAddress = func(a net.Addr) bool {
		return verify != nil && verify(a) || g.mustRetry()
	}
	tr.ConnContext = func(ctx context.Context, ci *quic.ClientInfo) (context.Context, error) {
		if connContext != nil {
			var err error
			if ctx, err = connContext(ctx, ci); err != nil {
				return nil, err
			}
		}
		s, err := g.admit(sourceOf(ci.RemoteAddr))
		if err != nil {
			return nil, err
		}
		// The context ends with the connection, or when its handshake
		// fails: either way its place is free again.
		context.AfterFunc(ctx, s.release)
		return context.WithValue(ctx, handshakeSlotKey{}, s), nil
	}
}

// mustRetry reports whether a new connection attempt from an address not
// yet validated must answer a Retry first.
func (g *handshakeGuard) mustRetry() bool {
	g.mu.Lock()
	retry := g.pending >= g.limits.RetryAbove
	g.mu.Unlock()
	if retry {
		g.retries.Add(1)
	}
	return retry
}

// admit counts a new connection from src in, or refuses it at a limit.
func (g *handshakeGuard) admit(src netip.Addr) (*handshakeSlot, error) {
	g.mu.Lock()
	pending, fromSrc := g.pending, g.bySource[src]
	ok := pending < g.limits.Max && fromSrc < g.limits.MaxPerSource
	if ok {
		g.pending++
		g.bySource[src]++
	}
	g.mu.Unlock()
	switch {
	case ok:
		return &handshakeSlot{g: g, src: src}, nil
	case pending >= g.limits.Max:
		g.hits.hit(g.log, LimitHandshakes, "connection attempt refused: too many unauthenticated connections pending",
			"source", src, "max_handshakes", g.limits.Max)
		return nil, fmt.Errorf("%d unauthenticated connections pending, the limit", pending)
	default:
		g.hits.hit(g.log, LimitHandshakesPerSource, "connection attempt refused: too many unauthenticated connections pending from one address",
			"source", src, "max_handshakes_per_source", g.limits.MaxPerSource)
		return nil, fmt.Errorf("%d unauthenticated connections pending from %s, the limit", fromSrc, src)
	}
}

func (s *handshakeSlot) release() {
	s.once.Do(func() {
		g := s.g
		g.mu.Lock()
		defer g.mu.Unlock()
		g.pending--
		if g.bySource[s.src]--; g.bySource[s.src] <= 0 {
			delete(g.bySource, s.src)
		}
	})
}

// authenticated frees conn's place among the unauthenticated connections.
func authenticated(conn Conn) {
	if s, ok := conn.Context().Value(handshakeSlotKey{}).(*handshakeSlot); ok {
		s.release()
	}
}

// inHandshake returns the number of unauthenticated connections pending.
func (g *handshakeGuard) inHandshake() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pending
}

// sourceOf is the IP address of a UDP peer, IPv4 unmapped.
func sourceOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}
