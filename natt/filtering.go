package natt

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/pion/stun/v2"
)

// Filtering is what a NAT (or stateful firewall) lets in, as measured by
// QueryFiltering.
type Filtering int

const (
	// FilteringUnknown: the test could not be made (the server has no
	// second port, or did not answer).
	FilteringUnknown Filtering = iota
	// FilteringOpen: packets from a port we never sent to got in
	// (endpoint-independent or address-dependent filtering).
	FilteringOpen
	// FilteringRestricted: only the exact address and port we sent to gets
	// in (address- and port-dependent filtering): dial-backs from elsewhere
	// need a punch first.
	FilteringRestricted
)

func (f Filtering) String() string {
	switch f {
	case FilteringOpen:
		return "open (packets from other ports get in)"
	case FilteringRestricted:
		return "address and port dependent (only replies get in; dial-backs need a punch)"
	}
	return "unknown"
}

// probeTries is how many change-port requests QueryFiltering sends.
const probeTries = 3

// QueryFiltering measures the filtering of the NAT in front of us: it asks
// server (a reporter with a probe port, see Server.ServeWithProbe) to
// answer from another port, probeTries times over about a second. An
// answer from another port means packets from elsewhere get in; silence
// means they do not, provided the server answered Query just before.
func (c *Client) QueryFiltering(ctx context.Context, server netip.AddrPort) (Filtering, error) {
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest,
		stun.RawAttribute{Type: AttrChangeRequest, Value: []byte{0, 0, 0, changePortFlag}}, stun.Fingerprint)
	if err != nil {
		return FilteringUnknown, fmt.Errorf("build STUN request: %w", err)
	}
	q := &query{server: server, result: make(chan netip.AddrPort, 1), anyPort: true, from: make(chan netip.AddrPort, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return FilteringUnknown, ErrClosed
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
	for range probeTries {
		if _, err := c.cfg.Send(req.Raw, server); err != nil {
			c.log.Debug("STUN request not sent", "server", server, "err", err)
		}
		timer.Reset(rto)
		select {
		case <-q.result:
			if from := <-q.from; from.Port() != server.Port() {
				return FilteringOpen, nil
			}
			return FilteringUnknown, fmt.Errorf("%s answered from the same port: it has no probe port", server)
		case <-timer.C:
			rto = min(2*rto, maxRTO)
		case <-ctx.Done():
			return FilteringUnknown, context.Cause(ctx)
		}
	}
	return FilteringRestricted, nil
}
