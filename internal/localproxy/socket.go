package localproxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/quic-go/quic-go"

	"quictunnel/natt"
)

// tunnelSocket is localproxy's one UDP socket seen from the STUN side:
// quic-go owns the socket and hands us every packet that is not QUIC
// (first two bits zero; see natt.IsSTUN for why STUN always is), which we
// feed to the STUN client. Outgoing STUN goes through Transport.WriteTo, so
// the reporter sees the same public address coordinator does.
type tunnelSocket struct {
	tr   *quic.Transport
	stun *natt.Client
	log  *slog.Logger
	done sync.WaitGroup
}

func newTunnelSocket(tr *quic.Transport, log *slog.Logger) (*tunnelSocket, error) {
	s := &tunnelSocket{tr: tr, log: log}
	client, err := natt.NewClient(natt.ClientConfig{
		Send: func(b []byte, to netip.AddrPort) (int, error) {
			return tr.WriteTo(b, net.UDPAddrFromAddrPort(to))
		},
		Logger: log.With("component", "stun"),
	})
	if err != nil {
		return nil, err
	}
	s.stun = client
	return s, nil
}

// start reads non-QUIC packets in the background until the returned stop
// function is called (it waits for the reader to end) or the transport
// closes.
func (s *tunnelSocket) start(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	s.done.Go(func() { s.read(ctx) })
	return func() { cancel(); s.done.Wait(); s.stun.Close() }
}

func (s *tunnelSocket) read(ctx context.Context) {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.tr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return
		}
		if !s.stun.HandlePacket(buf[:n], publicAddrOf(from)) {
			s.log.Debug("dropped a non-QUIC packet that is not STUN", "from", from, "bytes", n)
		}
	}
}

// filtering measures the NAT's filtering with the reporter at addr.
func (s *tunnelSocket) filtering(ctx context.Context, addr string) (natt.Filtering, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return natt.FilteringUnknown, fmt.Errorf("resolve reporter %s: %w", addr, err)
	}
	return s.stun.QueryFiltering(ctx, publicAddrOf(ua))
}

// publicAddr asks the reporter at addr for our public address.
func (s *tunnelSocket) publicAddr(ctx context.Context, addr string) (netip.AddrPort, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolve reporter %s: %w", addr, err)
	}
	// Ask for keepalive pings too: answering them keeps the NAT mapping
	// open between requests. Servers that do not know the attribute (any
	// standard STUN server) just answer the query.
	return s.stun.QueryKeepalive(ctx, publicAddrOf(ua))
}
