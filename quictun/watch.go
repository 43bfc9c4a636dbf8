package quictun

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/quic-go/quic-go"
)

// Dial-back connections from coordinator itself (not from a dial-back
// worker) live no longer than the coordinator that dialed them: when the
// control connection ends (coordinator closes them itself then, or it was
// restarted and answered with a stateless reset), or when coordinator
// stops answering while they were carrying data, they are closed so their
// sessions end at once instead of hanging until the QUIC idle timeout.
// A restarted coordinator cannot reset them: it was the QUIC client of
// those connections, and localproxy addresses them by a connection ID
// that carries no reset token.
//
// An idle control connection is watched too: a restarted coordinator
// drops its keepalive PINGs without a stateless reset (quic-go sends one
// only for a packet larger than 42 bytes), so a localproxy that only
// exposes apps would learn of the restart at the QUIC idle timeout (30 s)
// and its apps would be offline until then. A packet sent on the control
// connection and left unanswered for answerWithin draws a probe, which a
// restarted coordinator answers with a stateless reset.

const (
	// watchEvery is how often the dial-back connections from coordinator
	// are checked for a stall: one that received packets in the last
	// period and none in this one.
	watchEvery = 500 * time.Millisecond
	// silentLimit is how long coordinator may leave a probe unanswered
	// (plus a few round trips) before its dial-back connections are
	// closed.
	silentLimit = 2 * time.Second
	// answerWithin is how long a packet sent on the control connection
	// (a keepalive PING, say) may go unanswered, plus a few round trips,
	// before coordinator is probed.
	answerWithin = time.Second
)

// watchCoordinator probes coordinator on conn, the control connection,
// when a dial-back connection from it stalls, and closes its dial-back
// connections when nothing at all comes back within silentLimit. A
// restarted coordinator answers the probe with a stateless reset, which
// ends conn (and connectAndWait closes them). It returns when conn or ctx
// ends.
func (c *Client) watchCoordinator(ctx context.Context, conn Conn) {
	tick := time.NewTicker(watchEvery)
	defer tick.Stop()
	coord := addrPort(conn.RemoteAddr())
	type seen struct {
		packets uint64
		active  bool // received packets in the last period
	}
	last := map[*quic.Conn]seen{}
	var probed time.Time
	var ctrlAtProbe uint64 // packets received on conn when probed
	sent, _ := conn.(interface{ Sent() uint64 })
	var lastCtrl, sentAtCtrl uint64 // packets received on conn and sent then
	var waiting time.Time           // since when a packet sent waits for any answer
	for {
		select {
		case <-ctx.Done():
			return
		case <-conn.Context().Done():
			return
		case <-tick.C:
		}
		ctrl := conn.Received()
		heard, stalled := ctrl != ctrlAtProbe, false
		unanswered := false
		if sent != nil {
			switch n := sent.Sent(); {
			case ctrl != lastCtrl:
				lastCtrl, sentAtCtrl, waiting = ctrl, n, time.Time{}
			case n != sentAtCtrl && waiting.IsZero():
				waiting = time.Now()
			case !waiting.IsZero():
				unanswered = time.Since(waiting) > answerWithin+3*conn.RTT()
			}
		}
		now := map[*quic.Conn]seen{}
		for _, d := range c.dialBacksFrom(coord) {
			n := d.ConnectionStats().PacketsReceived
			prev := last[d] // a new one: zero packets before
			active := n != prev.packets
			now[d] = seen{packets: n, active: active}
			heard = heard || active
			stalled = stalled || (prev.active && !active)
		}
		last = now
		switch {
		case !probed.IsZero() && heard:
			probed = time.Time{} // it answered
		case !probed.IsZero():
			if time.Since(probed) > silentLimit+3*conn.RTT() {
				if n := c.closeDialBacksFrom(coord, "coordinator stopped answering"); n > 0 {
					c.log.Warn("coordinator stopped answering: closed its dial-back connections", "coordinator", coord,
						"connections", n, "silent_for", time.Since(probed).Round(time.Millisecond))
				}
				probed = time.Time{}
			}
		case stalled || unanswered:
			probe(conn)
			probed, ctrlAtProbe = time.Now(), ctrl
		}
	}
}

// probeSize is the padding a probe carries: a restarted coordinator sends
// a stateless reset only for a packet larger than 42 bytes.
const probeSize = 32

// probe makes coordinator answer on conn: a stream carrying probeSize
// zero bytes, which coordinator takes for an unknown message (type 0) and
// resets, as it always has (wire.go, flow step 9).
func probe(conn Conn) {
	ctx, cancel := context.WithTimeout(conn.Context(), time.Second)
	defer cancel()
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return
	}
	str.CancelRead(quic.StreamErrorCode(CodeCanceled))
	str.Write(make([]byte, probeSize))
	str.Close()
}

// dialBacksFrom lists the dial-back connections whose peer is at addr.
func (c *Client) dialBacksFrom(addr netip.AddrPort) []*quic.Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	var conns []*quic.Conn
	for conn := range c.dialBacks {
		if addrPort(conn.RemoteAddr()) == addr {
			conns = append(conns, conn)
		}
	}
	return conns
}

// closeDialBacksFrom closes the dial-back connections whose peer is at
// addr, with reason, and returns how many it closed.
func (c *Client) closeDialBacksFrom(addr netip.AddrPort, reason string) int {
	c.mu.Lock()
	var conns []*quic.Conn
	for conn := range c.dialBacks {
		if addrPort(conn.RemoteAddr()) == addr {
			conns = append(conns, conn)
			delete(c.dialBacks, conn)
		}
	}
	c.mu.Unlock()
	return c.closeDialBacks(conns, reason)
}

// addrPort is a UDP address as a comparable value, IPv4-mapped addresses
// unmapped.
func addrPort(a net.Addr) netip.AddrPort {
	u, ok := a.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	ap := u.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
