//go:build linux

// Package udpgro lets a QUIC transport receive with UDP GRO on Linux: the
// kernel hands over runs of datagrams from one sender as one buffer (on
// loopback, a GSO send arrives whole instead of cut into packets), and Conn
// cuts them into datagrams again for quic-go.
package udpgro

import (
	"encoding/binary"
	"net"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

const (
	batch   = 8
	bufSize = 1 << 16 // the largest run the kernel hands over
	oobSize = 256
)

// Conn is a *net.UDPConn whose batch reads (ReadBatch, which quic-go uses
// when a connection has it) come from GRO runs cut into datagrams. Every
// other method is the UDPConn's, so GSO sends, ECN and socket options are
// unchanged.
type Conn struct {
	*net.UDPConn
	pc   *ipv4.PacketConn
	msgs []ipv4.Message
	seg  []int // each message's datagram size (GRO segment size), or 0
	n    int   // messages in msgs from the last read
	// position of the next datagram to hand out
	msg, off int
}

// Wrap turns on UDP GRO for c and returns c wrapped in a Conn; when the
// kernel refuses GRO it returns c itself.
func Wrap(c *net.UDPConn) net.PacketConn {
	rc, err := c.SyscallConn()
	if err != nil {
		return c
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	}); err != nil || serr != nil {
		return c
	}
	g := &Conn{UDPConn: c, pc: ipv4.NewPacketConn(c), msgs: make([]ipv4.Message, batch), seg: make([]int, batch)}
	for i := range g.msgs {
		g.msgs[i].Buffers = [][]byte{make([]byte, bufSize)}
		g.msgs[i].OOB = make([]byte, oobSize)
	}
	return g
}

// ReadBatch fills ms with datagrams, one per message, reading from the
// socket only when every datagram of the last read has been handed out.
func (g *Conn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if g.msg >= g.n {
		n, err := g.pc.ReadBatch(g.msgs, flags)
		if err != nil {
			return 0, err
		}
		g.n, g.msg, g.off = n, 0, 0
		for i := range n {
			m := &g.msgs[i]
			m.NN, g.seg[i] = takeGRO(m.OOB[:m.NN])
		}
	}
	filled := 0
	for filled < len(ms) && g.msg < g.n {
		m := &g.msgs[g.msg]
		data := m.Buffers[0][:m.N]
		seg := g.seg[g.msg]
		if seg <= 0 || seg > len(data) {
			seg = len(data)
		}
		end := min(g.off+seg, len(data))
		out := &ms[filled]
		out.N = copy(out.Buffers[0], data[g.off:end])
		out.NN = copy(out.OOB, m.OOB[:m.NN])
		out.Addr, out.Flags = m.Addr, m.Flags
		filled++
		g.off = end
		if g.off >= len(data) {
			g.msg++
			g.off = 0
		}
	}
	return filled, nil
}

// takeGRO removes the GRO control message from oob, in place, and returns
// the length of what is left and the segment size it gave (0 without it).
func takeGRO(oob []byte) (int, int) {
	rest := oob
	for len(rest) >= unix.SizeofCmsghdr { // shorter: not a control message (and x/sys would read past it)
		hdr, body, remainder, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			break
		}
		if hdr.Level == unix.IPPROTO_UDP && hdr.Type == unix.UDP_GRO && len(body) >= 4 {
			seg := int(binary.NativeEndian.Uint32(body))
			at := len(oob) - len(rest)
			n := copy(oob[at:], remainder)
			return at + n, seg
		}
		rest = remainder
	}
	return len(oob), 0
}
