package natt

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

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
	_, err = c.transact(ctx, req, q, probeTries)
	switch {
	case errors.Is(err, ErrNoResponse) && ctx.Err() == nil:
		return FilteringRestricted, nil
	case err != nil:
		return FilteringUnknown, err
	}
	if from := <-q.from; from.Port() != server.Port() {
		return FilteringOpen, nil
	}
	return FilteringUnknown, fmt.Errorf("%s answered from the same port: it has no probe port", server)
}
