package natt

import "encoding/binary"

const (
	headerSize  = 20
	magicCookie = 0x2112A442
)

// IsSTUN reports whether b looks like a STUN message: the first two bits
// are zero, the length field is a multiple of 4 that matches len(b), and
// the magic cookie is in place.
//
// STUN and QUIC can share a socket without ambiguity: every QUIC packet,
// long or short header, has the "fixed bit" 0x40 set in its first byte
// (RFC 9000 §17), while a STUN message's first two bits are always zero
// (RFC 8489 §5). quic-go hands exactly the packets with both top bits clear
// to Transport.ReadNonQUICPacket; IsSTUN then checks the rest.
func IsSTUN(b []byte) bool {
	if len(b) < headerSize || b[0]&0xC0 != 0 {
		return false
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	return n%4 == 0 && n == len(b)-headerSize && binary.BigEndian.Uint32(b[4:8]) == magicCookie
}
