//go:build linux

package udpgro

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// readAll reads n datagrams through g's ReadBatch in batches of size
// batch, as quic-go does (1452-byte buffers).
func readAll(t *testing.T, g *Conn, n, batchLen int) [][]byte {
	t.Helper()
	var got [][]byte
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < n {
		ms := make([]ipv4.Message, batchLen)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, 1452)}
			ms[i].OOB = make([]byte, 128)
		}
		k, err := g.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("ReadBatch after %d datagrams: %v", len(got), err)
		}
		for _, m := range ms[:k] {
			got = append(got, append([]byte(nil), m.Buffers[0][:m.N]...))
			if m.Addr == nil {
				t.Error("datagram without a source address")
			}
		}
	}
	return got
}

func TestReadBatchCutsGSORuns(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			recv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(host)})
			if err != nil {
				t.Fatal(err)
			}
			defer recv.Close()
			g, ok := Wrap(recv).(*Conn)
			if !ok {
				t.Skip("kernel without UDP_GRO")
			}
			send, err := net.DialUDP("udp", nil, recv.LocalAddr().(*net.UDPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer send.Close()

			// One GSO send of 10 datagrams of 1200 bytes and a short last
			// one; on loopback it arrives as one run.
			const seg = 1200
			var want [][]byte
			var run []byte
			for i := range 11 {
				d := bytes.Repeat([]byte{byte(i + 1)}, seg)
				if i == 10 {
					d = d[:345]
				}
				want = append(want, d)
				run = append(run, d...)
			}
			oob := make([]byte, unix.CmsgSpace(2))
			h := (*unix.Cmsghdr)(unsafePointer(oob))
			h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
			h.SetLen(unix.CmsgLen(2))
			binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], seg)
			if _, _, err := send.WriteMsgUDP(run, oob, nil); err != nil {
				t.Skipf("GSO send refused: %v", err)
			}
			// And two plain datagrams.
			send.Write([]byte("plain one"))
			send.Write([]byte("plain two"))
			want = append(want, []byte("plain one"), []byte("plain two"))

			got := readAll(t, g, len(want), 3) // batches smaller than a run
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("datagram %d: %d bytes starting %x, want %d bytes starting %x", i, len(got[i]), got[i][:1], len(want[i]), want[i][:1])
				}
			}
		})
	}
}

func TestTakeGRO(t *testing.T) {
	tos := unixCmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{2})
	gro := unixCmsg(unix.IPPROTO_UDP, unix.UDP_GRO, binary.NativeEndian.AppendUint32(nil, 1452))
	tests := []struct {
		name    string
		oob     []byte
		wantOOB []byte
		wantSeg int
	}{
		{"none", nil, nil, 0},
		{"no GRO", tos, tos, 0},
		{"GRO only", gro, nil, 1452},
		{"GRO after TOS", cat(tos, gro), tos, 1452},
		{"GRO before TOS", cat(gro, tos), tos, 1452},
		{"garbage", []byte{1, 2, 3}, []byte{1, 2, 3}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			oob := append([]byte(nil), tt.oob...)
			n, seg := takeGRO(oob)
			if seg != tt.wantSeg || !bytes.Equal(oob[:n], tt.wantOOB) {
				t.Fatalf("takeGRO = %x, %d; want %x, %d", oob[:n], seg, tt.wantOOB, tt.wantSeg)
			}
		})
	}
}

func FuzzTakeGRO(f *testing.F) {
	f.Add(cat(unixCmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{2}), unixCmsg(unix.IPPROTO_UDP, unix.UDP_GRO, []byte{0xac, 5, 0, 0})))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		in := append([]byte(nil), oob...)
		n, _ := takeGRO(oob)
		if n < 0 || n > len(in) {
			t.Fatalf("takeGRO(%x) = %d", in, n)
		}
		// What is left is the input without one contiguous piece.
		out := oob[:n]
		cut := 0
		for cut < n && out[cut] == in[cut] {
			cut++
		}
		if !bytes.Equal(out[cut:], in[len(in)-(n-cut):]) {
			t.Fatalf("takeGRO(%x) left %x, not the input less one piece", in, out)
		}
	})
}

func unixCmsg(level, typ int, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafePointer(b))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}
