package natt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v2"
)

// ServerConfig configures a Server. Zero values select the defaults.
type ServerConfig struct {
	// KeepAliveInterval is how often clients that asked are pinged.
	// Default 15s.
	KeepAliveInterval time.Duration
	// MaxMisses is how many pings in a row may go unanswered before a
	// client is forgotten. Default 3. A client that never answered one
	// (perhaps a spoofed source) is forgotten at its first miss.
	MaxMisses int
	// MaxClients bounds the clients kept alive at once. Default 10000.
	MaxClients int
	// RatePerSecond and Burst bound the requests answered per source
	// address; excess requests are dropped. Defaults 20 and 40.
	RatePerSecond, Burst float64
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
	// now is the clock; tests replace it.
	now func() time.Time
}

func (c *ServerConfig) validate() error {
	switch {
	case c.KeepAliveInterval < 0:
		return &ConfigError{"KeepAliveInterval", "must not be negative"}
	case c.MaxMisses < 0:
		return &ConfigError{"MaxMisses", "must not be negative"}
	case c.MaxClients < 0:
		return &ConfigError{"MaxClients", "must not be negative"}
	case c.RatePerSecond < 0 || c.Burst < 0:
		return &ConfigError{"RatePerSecond", "must not be negative"}
	}
	return nil
}

func (c *ServerConfig) setDefaults() {
	if c.KeepAliveInterval == 0 {
		c.KeepAliveInterval = 15 * time.Second
	}
	if c.MaxMisses == 0 {
		c.MaxMisses = 3
	}
	if c.MaxClients == 0 {
		c.MaxClients = 10000
	}
	if c.RatePerSecond == 0 {
		c.RatePerSecond = 20
	}
	if c.Burst == 0 {
		c.Burst = 2 * c.RatePerSecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.now == nil {
		c.now = time.Now
	}
}

// Server is the reporter: it answers Binding requests and keeps alive the
// NAT mappings of clients that ask. One Server may serve several sockets.
type Server struct {
	cfg ServerConfig
	log *slog.Logger

	mu      sync.Mutex
	clients map[netip.AddrPort]*keptClient
	buckets map[netip.Addr]*bucket

	refusedLog   time.Time // when the last "keepalive refused" was logged
	refusedQuiet uint64    // refusals since, not logged

	requests, pings, forgotten, dropped, refused atomic.Uint64
}

// refusedLogEvery is the least time between two "keepalive refused"
// warnings: a flood of (possibly spoofed) sources past MaxClients cannot
// flood the log.
const refusedLogEvery = 5 * time.Second

// ServerStats is a snapshot of a Server's counters.
type ServerStats struct {
	Requests  uint64 // Binding requests answered
	KeptAlive int    // clients being pinged now
	Pings     uint64 // keepalive pings sent
	Forgotten uint64 // clients dropped after MaxMisses
	Dropped   uint64 // requests dropped: rate limit or malformed
	Refused   uint64 // keepalive requests refused: MaxClients kept alive
}

// keptClient is a client being kept alive.
type keptClient struct {
	pc      net.PacketConn
	misses  int
	pending [stun.TransactionIDSize]byte // txid of the unanswered ping
	waiting bool
	// answered is set by the first answer to a ping: a client that never
	// answered (perhaps a spoofed source) is forgotten at its first miss.
	answered bool
}

// NewServer validates cfg and returns a server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	return &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		clients: make(map[netip.AddrPort]*keptClient),
		buckets: make(map[netip.Addr]*bucket),
	}, nil
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	n := len(s.clients)
	s.mu.Unlock()
	return ServerStats{Requests: s.requests.Load(), KeptAlive: n, Pings: s.pings.Load(),
		Forgotten: s.forgotten.Load(), Dropped: s.dropped.Load(), Refused: s.refused.Load()}
}

// Serve answers STUN on pc and pings the clients that registered through
// it, until ctx ends (it returns nil) or pc fails.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn) error {
	return s.ServeWithProbe(ctx, pc, nil)
}

// ServeWithProbe is Serve with a second socket, probe, on another port of
// the same address: a Binding request carrying CHANGE-REQUEST "change
// port" (RFC 5780) is answered from it, so that a client learns whether
// its NAT lets in packets from a port it never sent to (filtering). A nil
// probe answers such requests from pc, which tells the client the test
// cannot be made.
func (s *Server) ServeWithProbe(ctx context.Context, pc, probe net.PacketConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	if probe != nil {
		wg.Go(func() {
			if err := s.read(ctx, probe, nil); err != nil {
				s.log.Warn("reporter probe socket stopped", "err", err)
			}
		})
	}
	wg.Go(func() { s.keepalive(ctx, pc) })
	return s.read(ctx, pc, probe)
}

// read serves requests arriving on pc until ctx ends.
func (s *Server) read(ctx context.Context, pc, probe net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("reporter read: %w", err)
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		ap := ua.AddrPort()
		s.handle(pc, probe, buf[:n], netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
}

// handle processes one datagram from a client.
func (s *Server) handle(pc, probe net.PacketConn, b []byte, from netip.AddrPort) {
	if !IsSTUN(b) {
		s.dropped.Add(1)
		return
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		s.dropped.Add(1)
		return
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		// RFC 8489 §14.7: a message whose FINGERPRINT does not match (or
		// is not last) is not STUN, or is damaged: discard it silently.
		s.dropped.Add(1)
		return
	}
	switch m.Type {
	case stun.BindingRequest:
		if !s.allow(from.Addr()) {
			s.dropped.Add(1)
			return
		}
		if unknown := unknownRequired(m); len(unknown) > 0 {
			// RFC 8489 §6.3.1: a request with comprehension-required
			// attributes we do not understand gets 420 listing them, and
			// nothing else happens (no keepalive, no other port).
			s.send(pc, errorUnknownAttributes(m, unknown), from)
			return
		}
		out := pc
		if probe != nil && changePort(m) {
			out = probe
		}
		if m.Contains(AttrKeepaliveRequest) {
			// Before the answer: a client that has it is being kept alive.
			// One whose answer is lost is forgotten after MaxMisses pings.
			s.register(pc, from)
		}
		s.send(out, s.response(m, from), from)
	case stun.BindingSuccess:
		s.pong(m, from)
	}
}

// send writes resp, an answer to a request from from, on pc.
func (s *Server) send(pc net.PacketConn, resp []byte, from netip.AddrPort) {
	if resp == nil {
		return
	}
	if _, err := pc.WriteTo(resp, net.UDPAddrFromAddrPort(from)); err != nil {
		s.log.Debug("STUN response not sent", "to", from, "err", err)
		return
	}
	s.requests.Add(1)
}

// understood are the comprehension-required attributes (0x0000-0x7FFF) a
// Binding request may carry here: CHANGE-REQUEST (RFC 5780). Every other
// one, including the RFC 8489 authentication attributes (the reporter
// authenticates nobody) and RFC 5780's RESPONSE-PORT and PADDING, gets a
// 420 answer.
var understood = map[stun.AttrType]bool{AttrChangeRequest: true}

// maxUnknownListed bounds the attribute types a 420 answer lists.
const maxUnknownListed = 16

// unknownRequired returns the comprehension-required attribute types of m
// that the server does not understand, each once, at most
// maxUnknownListed of them.
func unknownRequired(m *stun.Message) []stun.AttrType {
	var out []stun.AttrType
	for _, a := range m.Attributes {
		if a.Type.Required() && !understood[a.Type] && !slices.Contains(out, a.Type) && len(out) < maxUnknownListed {
			out = append(out, a.Type)
		}
	}
	return out
}

// errorUnknownAttributes builds the 420 (Unknown Attribute) answer to req,
// with UNKNOWN-ATTRIBUTES listing unknown (RFC 8489 §14.9: 16 bits each,
// padded to 4 bytes; pion's UnknownAttributes spends 4 bytes on each), and
// FINGERPRINT only if the request had one. Each listed type took at least
// 4 bytes of the request, so the answer stays small (no amplification).
func errorUnknownAttributes(req *stun.Message, unknown []stun.AttrType) []byte {
	list := make([]byte, 0, 2*len(unknown))
	for _, t := range unknown {
		list = binary.BigEndian.AppendUint16(list, uint16(t))
	}
	setters := []stun.Setter{stun.NewTransactionIDSetter(req.TransactionID), stun.BindingError,
		stun.CodeUnknownAttribute, stun.RawAttribute{Type: stun.AttrUnknownAttributes, Value: list}}
	if req.Contains(stun.AttrFingerprint) {
		setters = append(setters, stun.Fingerprint)
	}
	resp, err := stun.Build(setters...)
	if err != nil {
		return nil
	}
	return resp.Raw
}

// response builds the answer to a Binding request: XOR-MAPPED-ADDRESS,
// and FINGERPRINT only if the request had one, so the answer is never
// much larger than the question (no amplification).
func (s *Server) response(req *stun.Message, from netip.AddrPort) []byte {
	setters := []stun.Setter{stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())}}
	if req.Contains(stun.AttrFingerprint) {
		setters = append(setters, stun.Fingerprint)
	}
	resp, err := stun.Build(setters...)
	if err != nil {
		return nil
	}
	return resp.Raw
}

// changePort reports whether m asks for the answer from another port.
func changePort(m *stun.Message) bool {
	v, err := m.Get(AttrChangeRequest)
	return err == nil && len(v) == 4 && v[3]&changePortFlag != 0
}

// register starts (or refreshes) keepalive for a client.
func (s *Server) register(pc net.PacketConn, from netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[from]; ok {
		c.misses, c.pc = 0, pc
		return
	}
	if len(s.clients) >= s.cfg.MaxClients {
		s.refused.Add(1)
		if now := s.cfg.now(); now.Sub(s.refusedLog) >= refusedLogEvery {
			s.log.Warn("keepalive refused: too many clients", "client", from, "max_clients", s.cfg.MaxClients,
				"refusals_not_logged", s.refusedQuiet)
			s.refusedLog, s.refusedQuiet = now, 0
		} else {
			s.refusedQuiet++
		}
		return
	}
	// Per client at Debug: anyone can send these, from spoofed sources.
	s.clients[from] = &keptClient{pc: pc}
	s.log.Debug("keepalive started", "client", from, "interval", s.cfg.KeepAliveInterval)
}

// pong records a client's answer to a ping.
func (s *Server) pong(m *stun.Message, from netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[from]; ok && c.waiting && c.pending == m.TransactionID {
		if !c.answered {
			s.log.Debug("keepalive confirmed: client answered a ping", "client", from)
		}
		c.waiting, c.misses, c.answered = false, 0, true
	}
}

// keepalive pings the clients registered through pc every interval and
// forgets those that miss MaxMisses pings in a row.
func (s *Server) keepalive(ctx context.Context, pc net.PacketConn) {
	t := time.NewTicker(s.cfg.KeepAliveInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.pingAll(pc)
		}
	}
}

func (s *Server) pingAll(pc net.PacketConn) {
	type ping struct {
		to  netip.AddrPort
		raw []byte
	}
	var out []ping
	s.mu.Lock()
	for addr, c := range s.clients {
		if c.pc != pc {
			continue
		}
		if c.waiting {
			c.misses++
		}
		if c.misses >= s.cfg.MaxMisses || (c.misses > 0 && !c.answered) {
			delete(s.clients, addr)
			s.forgotten.Add(1)
			s.log.Debug("keepalive stopped: client stopped answering", "client", addr, "missed", c.misses)
			continue
		}
		m, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
		if err != nil {
			continue
		}
		c.pending, c.waiting = m.TransactionID, true
		out = append(out, ping{addr, m.Raw})
	}
	// Forget idle rate-limit buckets.
	now := s.cfg.now()
	for a, b := range s.buckets {
		if now.Sub(b.last) > time.Minute {
			delete(s.buckets, a)
		}
	}
	s.mu.Unlock()
	for _, p := range out {
		if _, err := pc.WriteTo(p.raw, net.UDPAddrFromAddrPort(p.to)); err == nil {
			s.pings.Add(1)
		}
	}
}

// bucket is a token bucket for one source address.
type bucket struct {
	tokens float64
	last   time.Time
}

// allow takes a token from addr's bucket.
func (s *Server) allow(addr netip.Addr) bool {
	now := s.cfg.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.buckets[addr]
	if !ok {
		if len(s.buckets) >= 4*s.cfg.MaxClients {
			return false // under a flood of sources, answer only known ones
		}
		b = &bucket{tokens: s.cfg.Burst, last: now}
		s.buckets[addr] = b
	}
	b.tokens = min(s.cfg.Burst, b.tokens+now.Sub(b.last).Seconds()*s.cfg.RatePerSecond)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
