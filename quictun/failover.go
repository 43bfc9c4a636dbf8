package quictun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/quic-go/quic-go"
)

// Several coordinators (ClientConfig.Coordinators): each time the client
// connects, it resolves the nodes into candidates (a host name with
// several A/AAAA records gives one per address) and dials them all at
// once; the first handshake to complete wins, so the nearest node (lowest
// handshake round trip) carries the control connection and the others are
// abandoned. While that node lives the client stays on it, even when a
// nearer one comes back: it moves only when the connection fails, so it
// never flaps between nodes. The attempt right after a node's connection
// ended, or after it refused the Hello (max-clients reached, say), leaves
// that node out when there are others (Client.avoid), so a node that
// completes handshakes but takes no client cannot win every race.
//
// A node killed outright sends no close frame. With several candidates
// the control connection's QUIC idle timeout is therefore failoverIdle,
// with a keepalive PING every failoverIdle/2 of silence: a dead node is
// noticed at most 1.5×failoverIdle after it died. The client then
// connects anew (the reconnect backoff starts at 250 ms), and re-publishes
// its exposed services on the new node as on every connection. Over the
// TCP transport a dead process's socket is reset by its kernel at once; a
// dead machine is noticed when a yamux keepalive (every failoverIdle/2)
// goes unanswered for yamux's write timeout (10 s).

// failoverIdle is the control connection's QUIC idle timeout when the
// client has several candidates.
const failoverIdle = 2 * time.Second

// Node is one coordinator of a set the client may connect to.
type Node struct {
	// Addr is its QUIC address, "host:port". A host name that resolves to
	// several addresses gives a candidate per address.
	Addr string
	// TCP is its TCP transport's address, "host:port". Default: Addr.
	TCP string
}

func (n Node) validate() error {
	if _, _, err := net.SplitHostPort(n.Addr); err != nil {
		return fmt.Errorf("%q: want host:port: %w", n.Addr, err)
	}
	if n.TCP != "" {
		if _, _, err := net.SplitHostPort(n.TCP); err != nil {
			return fmt.Errorf("TCP %q: want host:port: %w", n.TCP, err)
		}
	}
	return nil
}

// endpoint is one candidate: a node's addresses, resolved.
type endpoint struct {
	quic, tcp  string // host:port
	serverName string // the name its certificate must carry
	// several: it is one of several candidates, so the control
	// connection notices a dead node fast (failoverIdle).
	several bool
}

// String is the QUIC address, with the TCP one when it differs.
func (e endpoint) String() string {
	if e.tcp == e.quic {
		return e.quic
	}
	return e.quic + " (tcp " + e.tcp + ")"
}

// addr is the address dialed over transport.
func (e endpoint) addr(transport string) string {
	if transport == TransportTCP {
		return e.tcp
	}
	return e.quic
}

// lookupFunc resolves a host name to its addresses.
type lookupFunc func(ctx context.Context, host string) ([]netip.Addr, error)

// resolveBound bounds the DNS look-ups of one connection attempt.
const resolveBound = 2 * time.Second

// candidates resolves the configured nodes into the endpoints to dial.
func (c *Client) candidates(ctx context.Context) []endpoint {
	ctx, cancel := context.WithTimeout(ctx, resolveBound)
	defer cancel()
	lookup := func(ctx context.Context, host string) ([]netip.Addr, error) {
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
	var eps []endpoint
	for _, n := range c.cfg.Coordinators {
		eps = append(eps, expandNode(ctx, n, c.cfg.ServerName, lookup)...)
	}
	several := len(eps) > 1
	for i := range eps {
		eps[i].several = several
	}
	return eps
}

// expandNode turns n into one endpoint per address its host resolves to
// (the TCP address follows when it names the same host). A literal address,
// or a name that does not resolve, gives one endpoint as written: dialing
// it reports the error. serverName "" means the host as written.
func expandNode(ctx context.Context, n Node, serverName string, lookup lookupFunc) []endpoint {
	host, port, _ := net.SplitHostPort(n.Addr)
	tcpHost, tcpPort, _ := net.SplitHostPort(n.TCP)
	if serverName == "" {
		serverName = host
	}
	one := []endpoint{{quic: n.Addr, tcp: n.TCP, serverName: serverName}}
	if _, err := netip.ParseAddr(host); err == nil {
		return one
	}
	addrs, err := lookup(ctx, host)
	if err != nil || len(addrs) < 2 {
		return one // one address: let the dial resolve it, as it always has
	}
	var eps []endpoint
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		if seen[a] {
			continue
		}
		seen[a] = true
		ep := endpoint{quic: net.JoinHostPort(a.String(), port), tcp: n.TCP, serverName: serverName}
		if strings.EqualFold(tcpHost, host) {
			ep.tcp = net.JoinHostPort(a.String(), tcpPort)
		}
		eps = append(eps, ep)
	}
	return eps
}

// dialResult is one candidate's outcome in raceDial.
type dialResult struct {
	ep   endpoint
	conn Conn
	err  error
	took time.Duration
}

// raceDial dials every endpoint at once and returns the first connection
// made: the nearest node's. Connections that complete later are closed;
// the others are cancelled and waited for. With one endpoint it is a
// plain dial. When all fail, the error joins theirs.
func raceDial(ctx context.Context, eps []endpoint, dial func(context.Context, endpoint) (Conn, error)) (dialResult, error) {
	if len(eps) == 1 {
		start := time.Now()
		conn, err := dial(ctx, eps[0])
		return dialResult{ep: eps[0], conn: conn, err: err, took: time.Since(start)}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan dialResult, len(eps))
	start := time.Now()
	for _, ep := range eps {
		go func() {
			conn, err := dial(ctx, ep)
			results <- dialResult{ep: ep, conn: conn, err: err, took: time.Since(start)}
		}()
	}
	var (
		won  dialResult
		errs []error
	)
	for range eps {
		r := <-results
		switch {
		case r.err != nil:
			errs = append(errs, r.err)
		case won.conn == nil:
			won = r
			cancel()
		default:
			r.conn.CloseWithError(quic.ApplicationErrorCode(CodeOK), "another coordinator was nearer")
		}
	}
	if won.conn == nil {
		return dialResult{}, errors.Join(errs...)
	}
	return won, nil
}

// choseAnother reports whether err ended a connection that a client
// closed without an error before its Hello: one of the candidates it
// dialed that another beat (raceDial), not a failed authentication.
func choseAnother(err error) bool {
	var ae *quic.ApplicationError
	return errors.As(err, &ae) && ae.Remote && ae.ErrorCode == quic.ApplicationErrorCode(CodeOK)
}

// currentNode is the endpoint of the control connection, or of the last
// one.
func (c *Client) currentNode() endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.node
}

// coordinatorName names the coordinator for logs and errors: the one of
// the control connection (or the last one), else the configured ones.
func (c *Client) coordinatorName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nodeSet {
		return c.node.String()
	}
	addrs := make([]string, len(c.cfg.Coordinators))
	for i, n := range c.cfg.Coordinators {
		addrs[i] = n.Addr
	}
	return strings.Join(addrs, ",")
}
