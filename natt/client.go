package natt

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v2"
)

// AttrKeepaliveRequest asks a reporter to ping this client's mapped address
// every keepalive interval. It is comprehension-optional (0x8000-0xFFFF),
// so standard servers ignore it. Its value is empty.
const AttrKeepaliveRequest stun.AttrType = 0xC001

// AttrChangeRequest is RFC 5780's CHANGE-REQUEST; changePortFlag asks for
// the answer from another port.
const (
	AttrChangeRequest stun.AttrType = 0x0003
	changePortFlag                  = 0x02
)

// maxRTO caps the retransmission timeout (RFC 8489 §6.2.1 doubles it).
const maxRTO = 3 * time.Second

// maxRetransmits is Rc of RFC 8489: requests sent before giving up.
const maxRetransmits = 7

// ClientConfig configures a Client. Zero values select the defaults.
type ClientConfig struct {
	// Send writes one datagram on the caller's socket. Required.
	Send func(b []byte, to netip.AddrPort) (int, error)
	// RTO is the first retransmission timeout; it doubles up to 3s.
	// Default 250ms.
	RTO time.Duration
	// OnPing, if set, is called for every keepalive ping that arrives
	// from a server this client asked for keepalive (after answering it).
	OnPing func(from netip.AddrPort)
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
}

// Client queries STUN servers for the address its socket is mapped to,
// and answers keepalive pings. It owns no socket; see the package doc.
type Client struct {
	cfg ClientConfig
	log *slog.Logger

	mu         sync.Mutex
	closed     bool
	pending    map[[stun.TransactionIDSize]byte]*query
	keepalives map[netip.AddrPort]bool // servers we asked to ping us
}

type query struct {
	server netip.AddrPort
	result chan netip.AddrPort // buffered, 1
	// anyPort accepts the answer from any port of server's address, and
	// reports that port in from.
	anyPort bool
	from    chan netip.AddrPort // buffered, 1, with anyPort
}

// NewClient validates cfg and returns a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Send == nil {
		return nil, &ConfigError{"Send", "required"}
	}
	if cfg.RTO < 0 {
		return nil, &ConfigError{"RTO", "must not be negative"}
	}
	if cfg.RTO == 0 {
		cfg.RTO = 250 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Client{
		cfg:        cfg,
		log:        cfg.Logger,
		pending:    make(map[[stun.TransactionIDSize]byte]*query),
		keepalives: make(map[netip.AddrPort]bool),
	}, nil
}

// Query asks server for our mapped address, retransmitting per RFC 8489
// until a response arrives, ctx ends, or 7 requests went unanswered.
func (c *Client) Query(ctx context.Context, server netip.AddrPort) (netip.AddrPort, error) {
	return c.query(ctx, server, false)
}

// QueryKeepalive is Query that also asks server to keep our mapping open
// by pinging us. A server that does not support it answers like Query.
func (c *Client) QueryKeepalive(ctx context.Context, server netip.AddrPort) (netip.AddrPort, error) {
	return c.query(ctx, server, true)
}

func (c *Client) query(ctx context.Context, server netip.AddrPort, keepalive bool) (netip.AddrPort, error) {
	setters := []stun.Setter{stun.TransactionID, stun.BindingRequest}
	if keepalive {
		setters = append(setters, stun.RawAttribute{Type: AttrKeepaliveRequest})
	}
	setters = append(setters, stun.Fingerprint)
	req, err := stun.Build(setters...)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("build STUN request: %w", err)
	}
	if keepalive {
		c.mu.Lock()
		c.keepalives[server] = true
		c.mu.Unlock()
	}
	return c.transact(ctx, req, &query{server: server, result: make(chan netip.AddrPort, 1)}, maxRetransmits)
}

// transact sends req to q.server, retransmitting with exponential backoff
// up to tries times, and returns the mapped address of the answer, or
// ErrNoResponse.
func (c *Client) transact(ctx context.Context, req *stun.Message, q *query, tries int) (netip.AddrPort, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return netip.AddrPort{}, ErrClosed
	}
	c.pending[req.TransactionID] = q
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, req.TransactionID)
		c.mu.Unlock()
	}()

	rto := c.cfg.RTO
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for sent := 0; ; sent++ {
		if sent == tries {
			return netip.AddrPort{}, fmt.Errorf("%w: %s after %d requests", ErrNoResponse, q.server, sent)
		}
		if _, err := c.cfg.Send(req.Raw, q.server); err != nil {
			c.log.Debug("STUN request not sent", "server", q.server, "err", err)
		}
		timer.Reset(rto)
		select {
		case addr := <-q.result:
			return addr, nil
		case <-timer.C:
			rto = min(2*rto, maxRTO)
		case <-ctx.Done():
			return netip.AddrPort{}, fmt.Errorf("%w: %s after %d requests: %w", ErrNoResponse, q.server, sent+1, context.Cause(ctx))
		}
	}
}

// HandlePacket consumes a packet read from the socket. It returns true if
// b was STUN (whether or not it was useful), false if the caller should
// handle it otherwise.
func (c *Client) HandlePacket(b []byte, from netip.AddrPort) bool {
	if !IsSTUN(b) {
		return false
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil {
		c.log.Debug("malformed STUN packet", "from", from, "err", err)
		return true
	}
	switch {
	case m.Type == stun.BindingSuccess:
		c.handleResponse(m, from)
	case m.Type == stun.BindingRequest:
		c.handlePing(m, from)
	}
	return true
}

func (c *Client) handleResponse(m *stun.Message, from netip.AddrPort) {
	c.mu.Lock()
	q, ok := c.pending[m.TransactionID]
	c.mu.Unlock()
	if !ok || (q.server != from && !(q.anyPort && q.server.Addr() == from.Addr())) {
		return // late, duplicate or spoofed
	}
	if q.anyPort {
		select {
		case q.from <- from:
		default:
		}
	}
	addr, err := mappedAddress(m)
	if err != nil {
		c.log.Debug("STUN response without address", "from", from, "err", err)
		return
	}
	select {
	case q.result <- addr:
	default:
	}
}

// handlePing answers a keepalive ping, from servers we asked only.
func (c *Client) handlePing(m *stun.Message, from netip.AddrPort) {
	c.mu.Lock()
	asked := c.keepalives[from] && !c.closed
	c.mu.Unlock()
	if !asked {
		return
	}
	resp, err := stun.Build(stun.NewTransactionIDSetter(m.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: from.Addr().AsSlice(), Port: int(from.Port())}, stun.Fingerprint)
	if err != nil {
		return
	}
	if _, err := c.cfg.Send(resp.Raw, from); err != nil {
		c.log.Debug("keepalive answer not sent", "to", from, "err", err)
	}
	if c.cfg.OnPing != nil {
		c.cfg.OnPing(from)
	}
}

// Close stops the client: pending and future queries fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

// mappedAddress reads XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from old servers.
func mappedAddress(m *stun.Message) (netip.AddrPort, error) {
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(m); err == nil {
		return toAddrPort(xor.IP, xor.Port)
	}
	var mapped stun.MappedAddress
	if err := mapped.GetFrom(m); err == nil {
		return toAddrPort(mapped.IP, mapped.Port)
	}
	return netip.AddrPort{}, ErrNoAddress
}

func toAddrPort(ip []byte, port int) (netip.AddrPort, error) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok || port <= 0 || port > 65535 {
		return netip.AddrPort{}, fmt.Errorf("%w: bad address %v:%d", ErrBadMessage, ip, port)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), nil
}
