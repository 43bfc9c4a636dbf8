// Package quictun is the QUIC tunnel between localproxy and coordinator.
//
// localproxy runs a [Client] on its one UDP socket. The client keeps an
// authenticated control connection to coordinator and serves the "tunnel
// creation service": a QUIC listener on the same socket that accepts only
// coordinator's dial-back connection. [Client.Dial] opens a session: it
// registers a random session id, asks coordinator to reach a target, and
// returns the stream coordinator dials back with, as a net.Conn.
//
// coordinator runs a [Server]: it checks each client's token, dials targets
// over TCP, dials back to the client from its own listening socket (one
// connection per client, one stream per session, the session id first) and
// relays bytes both ways.
//
// The wire protocol is documented in wire.go and docs/protocol.md. This
// package does not know about HTTP, STUN or command lines.
package quictun
