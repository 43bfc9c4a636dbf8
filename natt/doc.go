// Package natt is the NAT traversal side of the tunnel: STUN (RFC 8489)
// built on pion/stun.
//
// [Client] asks a STUN server (our reporter, or any standard one) for the
// public address its packets come from. It owns no socket: the caller
// gives it a Send function and feeds it every STUN packet it reads with
// HandlePacket, so STUN can share localproxy's QUIC socket. [Server] is the
// reporter: it answers Binding requests with XOR-MAPPED-ADDRESS and, for
// clients that ask, pings them every keepalive interval so their NAT
// mapping stays open, forgetting a client after a few unanswered pings.
//
// Keepalive is requested with a comprehension-optional attribute
// (KEEPALIVE-REQUEST, 0xC001, empty): servers that do not know it, such as
// coturn, answer normally. Pings are plain Binding requests from the
// server to the client, answered with Binding success responses, so every
// STUN parser reads them.
//
// natt does not import quic-go or the tunnel's other packages.
package natt
