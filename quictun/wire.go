package quictun

// This file is the tunnel's wire protocol. docs/protocol.md mirrors it.
//
// # Connections
//
// Control connection: localproxy (QUIC client) → coordinator (QUIC server),
// ALPN "quictun/1", TLS 1.3 with the coordinator's certificate. localproxy
// dials it from its one UDP socket, the same socket that carries STUN and
// the tunnel creation service, so the NAT mapping the coordinator sees is
// the one it later dials back to.
//
// Dial-back connection: coordinator (QUIC client) → localproxy (QUIC server,
// the "tunnel creation service"), ALPN "quictun-dialback/1". coordinator
// dials from its listening socket, so localproxy has already sent packets to
// that exact address and a NAT lets the dial-back in. Both ends are pinned:
// coordinator presents its own certificate as client certificate and
// localproxy accepts only the exact leaf it verified on the control
// connection; localproxy presents an ephemeral self-signed certificate whose
// SHA-256 it sent in Hello, and coordinator accepts no other. One dial-back
// connection per localproxy, reused by every session.
//
// TCP transport (coordinator ServeTCP, localproxy Via "tcp" or "auto"):
// the control connection may instead be TCP, TLS 1.3 with the same
// certificates and ALPN "quictun/1", then yamux (go-yamux v5 framing,
// localproxy the yamux client). Every stream and message below is the same;
// a stream reset or connection close carries its code in yamux's RST or
// GoAway (a close's reason text is not sent). Over it there is no dial-back
// (coordinator answers every Open with OpenResult and RelayMarker at once:
// 5a), no worker, and no unidirectional stream (no request log, 8).
//
// A localproxy given several coordinators dials them all at once and keeps
// the first connection made; it closes the others before Hello with
// CodeOK, which coordinator takes for no failed authentication.
//
// # Flow
//
//  1. localproxy opens the first bidirectional stream of the control
//     connection (the control stream) and writes Hello.
//  2. coordinator checks the token in constant time; on failure it closes the
//     connection with CodeUnauthorized and never dials anything for it. On
//     success it answers Welcome. localproxy opens no other stream before
//     Welcome: coordinator closes a connection that does, with
//     CodeProtocol (so does a worker's before its Welcome).
//  3. localproxy may later write AddrUpdate on the control stream when its
//     public address changes.
//  4. Per session, localproxy opens a new bidirectional stream and writes Open
//     (session id + target). coordinator dials the target over TCP and answers
//     OpenResult; on CodeOK it opens a stream on the dial-back connection,
//     writes SessionHeader, then relays the target's bytes both ways. The open
//     stream is then closed by both sides.
//  5. localproxy matches the dial-back stream to the waiting browser
//     connection by session id and writes the single byte dialBackAck on
//     it before anything else; an unknown or expired id is refused with
//     CodeSessionUnknown. coordinator relays nothing until the ack arrives:
//     a dial-back connection that stays silent (a NAT mapping lost while
//     idle) is dropped and the session relayed (5a) instead. A dial-back
//     stream localproxy resets (its session given up; the reset may
//     discard the ack) ends that session only: the connection answered.
//  4a. Dial-back service elsewhere: when coordinator has dial-back workers
//     (coordinator --role dialback, connected to it over ALPN
//     "quictun-worker/1" with WorkerHello), it hands each Open to the
//     client's worker as a Job on a new stream. The worker dials the target
//     and answers JobResult; coordinator forwards it as OpenResult, whose
//     PunchTo is the worker's address when the worker has no live dial-back
//     connection to this client yet. localproxy then sends punch packets
//     (STUN Binding indications, see PunchPacket) from its socket to PunchTo
//     and writes the single byte punchedMarker on the Open stream;
//     coordinator passes it on to the worker, which only then dials back
//     (NAT-NOTES: a dial-back that arrives before the punch spoils the
//     mapping). The worker dials the source its punch arrived from first,
//     then the reported and observed addresses. On success it writes
//     dialBackAck on the Job stream and relays on the dial-back stream;
//     otherwise it writes relayMarker and relays on the Job stream, which
//     coordinator splices to the Open stream (5a). A worker that is
//     draining closes its side of its first stream (FIN after
//     WorkerHello): coordinator gives it no more clients. A Job reaching it
//     after that is reset with CodeShutdown before any JobResult, and
//     coordinator serves that Open itself.
//  4b. Fast open (localproxy --fast-open): localproxy writes FastOpen instead
//     of Open and, without waiting, the session's bytes after it on the same
//     stream. coordinator dials the target, answers OpenResult and, on
//     CodeOK, relays the session on that stream: no dial-back, no worker.
//     localproxy reads the OpenResult before the session's first byte. This
//     saves the round trip a browser's CONNECT otherwise waits for; the
//     price is that the browser has its 200 before the target is reached.
//  5a. Relay: when the dial-back cannot be established within RelayAfter
//     (a symmetric NAT, inbound UDP blocked), coordinator writes the single
//     byte RelayMarker on the Open stream instead of ending it, and the
//     session's bytes flow on the Open stream itself, over the client's
//     own outbound connection.
//
// Reverse direction (exposed local apps):
//
//  6. localproxy opens a stream per service it exposes and writes Register;
//     coordinator answers RegisterResult (the public URL or port, or why
//     not: CodeNameTaken, CodeTargetForbidden, ...). The registration lives
//     as long as the control connection.
//  7. Per public connection, coordinator opens a stream on the control
//     connection and writes ReverseOpen; localproxy answers ReverseAck at
//     once (so a vanished client is noticed within a second), dials the
//     local app and answers OpenResult; then the public connection's bytes
//     flow both ways.
//  8. Request log: after each HTTP request coordinator relayed over a
//     reverse session, it writes RequestLog on a unidirectional stream it
//     opens on the control connection (one, kept open), so the client logs
//     every public request to its apps. Only a client that allows
//     unidirectional streams (its QUIC transport parameters) gets it: one
//     that did not ask (localproxy --log-public-requests), or is older,
//     allows none, and coordinator then sends nothing. Records that would
//     wait behind a slow client are dropped, never the requests.
//  9. Probe: when a dial-back connection from coordinator stops receiving
//     anything, or a packet sent on the control connection (a keepalive
//     PING) has had no answer for 1 s, localproxy may open a stream and write 32 zero bytes on it
//     (with FIN): coordinator takes it for an unknown message (type 0x00)
//     and resets the stream, as coordinators always have. It is only there
//     to make coordinator answer: a coordinator that restarted answers with
//     a stateless reset (which needs a packet larger than 42 bytes, hence
//     the padding); one that answers nothing within 2 s has its dial-back
//     connections closed.
//
// # Framing
//
// Control messages (Hello, Welcome, AddrUpdate, Open, OpenResult):
//
//	type    uint8
//	length  uint16 big-endian, length of body, at most MaxFrameSize
//	body    length bytes
//
// Inside a body, a string is a uint16 big-endian length followed by that many
// bytes of UTF-8; an address is a string holding "ip:port" or empty.
//
//	Hello       (0x01): version uint8, token string, public addr, dial-back
//	                    certificate SHA-256 [32]byte, client name string
//	Welcome     (0x02): version uint8, observed addr (the source coordinator
//	                    saw), dial-back source addr (where dial-backs come from)
//	AddrUpdate  (0x03): public addr
//	Open        (0x10): session id [16]byte, target string ("host:port")
//	OpenResult  (0x11): code uint16 (ErrorCode; 0 is success), reason string
//	FastOpen    (0x12): as Open; see 4b
//	Register    (0x20): kind uint8 (1 http, 2 tcp), name string, port uint16
//	                    (public port wanted; 0: none for http, any for tcp),
//	                    then, each only when it or a later one is set:
//	                    host header string (the Host value the app's
//	                    requests get; empty: unchanged), basic auth string
//	                    (empty, or 64 bytes: SHA-256 of the user name, then
//	                    of the password, that public requests must carry),
//	                    allow-from string (comma-separated CIDR prefixes
//	                    public clients must come from; empty: any)
//	RegisterResult (0x21): code uint16, reason string, port uint16, url string
//	ReverseOpen (0x30): session id [16]byte, service name string, remote
//	                    addr (the public peer)
//	ReverseAck  (0x31): empty
//	RequestLog  (0x32): session id [16]byte, service string, remote addr,
//	                    method string, target string, status uint16,
//	                    bytes up uint64, bytes down uint64, duration
//	                    (microseconds) uint64, flags uint8 (1: the public
//	                    client used TLS), outcome string ("ok" or why not)
//
// Session header, the first bytes of every dial-back stream (no type byte,
// fixed size so a reader never waits on a length):
//
//	magic    uint8 0xD1
//	version  uint8
//	session  [16]byte
//
// answered by localproxy with the byte 0x06 (dialBackAck).
//
// # Versions
//
//	1 (2026-11): first version.
//
// Unknown message types and versions are refused with CodeProtocol or
// CodeVersion; a peer never guesses.

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"strings"
	"time"
)

// ProtocolVersion is the version this build speaks.
const ProtocolVersion = 2

// ALPN protocol identifiers.
const (
	ALPNControl  = "quictun/1"
	ALPNDialBack = "quictun-dialback/1"
	ALPNWorker   = "quictun-worker/1"
)

// MaxFrameSize caps a control message body, so a peer cannot make us
// allocate more than this per frame.
const MaxFrameSize = 4096

// Bounds on fields inside frames.
const (
	maxTokenLen  = 1024
	maxTargetLen = 1024
	maxReasonLen = 1024
	maxNameLen   = 256
	maxAdvertise = 8
)

// Message types.
const (
	msgHello          uint8 = 0x01
	msgWelcome        uint8 = 0x02
	msgAddrUpdate     uint8 = 0x03
	msgOpen           uint8 = 0x10
	msgOpenResult     uint8 = 0x11
	msgFastOpen       uint8 = 0x12
	msgRegister       uint8 = 0x20
	msgRegisterResult uint8 = 0x21
	msgReverseOpen    uint8 = 0x30
	msgReverseAck     uint8 = 0x31
	msgRequestLog     uint8 = 0x32
	msgWorkerHello    uint8 = 0x40
	msgJob            uint8 = 0x41
	msgJobResult      uint8 = 0x42
)

// dialBackAck is localproxy's first byte on a dial-back stream.
const dialBackAck = 0x06

// relayMarker, written on an Open stream after OpenResult, says the
// session is relayed on that stream.
const relayMarker = 0x52

// punchedMarker, written by localproxy on an Open stream after an
// OpenResult with PunchTo, says its punch packets have left; coordinator
// passes it on to the worker on the Job stream.
const punchedMarker = 0x50

// sessionMagic starts every dial-back stream.
const sessionMagic = 0xD1

// SessionHeaderSize is the fixed length of a session header.
const SessionHeaderSize = 2 + SessionIDSize

// ErrorCode is a QUIC application error code used on connections and
// streams, and in OpenResult.
type ErrorCode uint16

// Error codes. The numeric values are part of the protocol.
const (
	CodeOK                ErrorCode = 0x0
	CodeProtocol          ErrorCode = 0x101 // malformed or unexpected message
	CodeVersion           ErrorCode = 0x102 // protocol version not supported
	CodeUnauthorized      ErrorCode = 0x103 // bad token
	CodeTargetUnreachable ErrorCode = 0x104 // coordinator could not dial the target
	CodeTargetForbidden   ErrorCode = 0x105 // target not allowed by policy
	CodeSessionUnknown    ErrorCode = 0x106 // dial-back for an unknown or expired session
	CodeTimeout           ErrorCode = 0x107 // a deadline passed
	CodeLimit             ErrorCode = 0x108 // a configured limit was hit
	CodeShutdown          ErrorCode = 0x109 // the peer is shutting down
	CodeCanceled          ErrorCode = 0x10A // the session was abandoned
	CodeDialBackFailed    ErrorCode = 0x10B // coordinator could not dial back
	CodeNameTaken         ErrorCode = 0x10C // service name or port already in use
	CodeUnknownService    ErrorCode = 0x10D // no such exposed service
	CodeTryLater          ErrorCode = 0x10E // a registration coordinator cannot decide now (cluster registry unreachable)
	CodeInternal          ErrorCode = 0x1FF
)

var codeNames = map[ErrorCode]string{
	CodeOK:                "ok",
	CodeProtocol:          "protocol error",
	CodeVersion:           "unsupported version",
	CodeUnauthorized:      "unauthorized",
	CodeTargetUnreachable: "target unreachable",
	CodeTargetForbidden:   "target forbidden",
	CodeSessionUnknown:    "unknown session",
	CodeTimeout:           "timeout",
	CodeLimit:             "limit reached",
	CodeShutdown:          "shutting down",
	CodeCanceled:          "canceled",
	CodeDialBackFailed:    "dial-back failed",
	CodeNameTaken:         "name or port taken",
	CodeUnknownService:    "unknown service",
	CodeTryLater:          "try again later",
	CodeInternal:          "internal error",
}

func (c ErrorCode) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code 0x%x", uint16(c))
}

// Hello is the first message of a control connection.
type Hello struct {
	Version    uint8
	Token      string
	PublicAddr netip.AddrPort // may be invalid when unknown
	CertSHA256 [32]byte       // localproxy's dial-back certificate
	ClientName string
}

// Welcome answers a valid Hello.
type Welcome struct {
	Version      uint8
	ObservedAddr netip.AddrPort // the source address coordinator saw
	DialBackFrom netip.AddrPort // where dial-backs will come from, when known
}

// AddrUpdate tells coordinator a new public address.
type AddrUpdate struct {
	PublicAddr netip.AddrPort
}

// Open asks coordinator to dial a target for a session.
type Open struct {
	Session SessionID
	Target  string
	// Fast makes it a FastOpen: the session's bytes follow on the same
	// stream at once, and coordinator relays the session on it, with no
	// dial-back.
	Fast bool
}

// OpenResult answers Open.
type OpenResult struct {
	Code   ErrorCode
	Reason string
	// PunchTo, when valid, asks localproxy to punch its NAT towards this
	// address and confirm with punchedMarker: the dial-back comes from
	// there.
	PunchTo netip.AddrPort
}

// WorkerHello is the first message of a dial-back worker's connection to
// coordinator.
type WorkerHello struct {
	Version uint8
	Token   string
	// Advertise lists the addresses clients should punch towards (one per
	// address family); empty means the source coordinator observes.
	Advertise []netip.AddrPort
}

// Job hands a session to a dial-back worker.
type Job struct {
	Session    SessionID
	Target     string
	CertSHA256 [32]byte       // the client's dial-back certificate
	Reported   netip.AddrPort // the public address the client reported
	Observed   netip.AddrPort // the source coordinator observes
}

// JobResult answers Job once the worker has dialed the target.
type JobResult struct {
	Code    ErrorCode
	Reason  string
	PunchTo netip.AddrPort // set when the client must punch first
}

// ServiceKind says how coordinator publishes an exposed service.
type ServiceKind uint8

// Service kinds.
const (
	ServiceHTTP ServiceKind = 1 // routed by Host name on coordinator's HTTP port
	ServiceTCP  ServiceKind = 2 // raw TCP on a public port of its own
)

func (k ServiceKind) String() string {
	switch k {
	case ServiceHTTP:
		return "http"
	case ServiceTCP:
		return "tcp"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// Register asks coordinator to publish a service.
type Register struct {
	Kind ServiceKind
	Name string
	Port uint16
	// HostHeader, if set, is the Host value the app's requests get.
	// BasicAuth, if set, is what public requests must carry. AllowFrom,
	// if set, is where public clients must come from. They go on the wire
	// only when set, so a Register without them is what a coordinator
	// older than the fields understands.
	HostHeader string
	BasicAuth  *AuthHash
	AllowFrom  []netip.Prefix
}

// maxAllowFrom bounds the prefixes of a Register's AllowFrom.
const maxAllowFrom = 64

// AuthHash is HTTP Basic credentials as coordinator keeps them: the
// SHA-256 of the user name and of the password.
type AuthHash struct{ User, Password [32]byte }

// ParseAllowFrom parses a comma-separated list of CIDR prefixes or
// addresses (an address stands for itself alone), at most 64.
func ParseAllowFrom(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("allow-from %q: want CIDR prefixes or addresses, comma-separated", s)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		out = append(out, p.Masked())
	}
	if len(out) > maxAllowFrom {
		return nil, fmt.Errorf("allow-from: %d prefixes, at most %d", len(out), maxAllowFrom)
	}
	return out, nil
}

// HashCredentials returns the AuthHash of user and password.
func HashCredentials(user, password string) *AuthHash {
	return &AuthHash{User: sha256.Sum256([]byte(user)), Password: sha256.Sum256([]byte(password))}
}

// RegisterResult answers Register.
type RegisterResult struct {
	Code   ErrorCode
	Reason string
	Port   uint16 // the public port, when the service has one
	URL    string // how the public reaches it, e.g. http://app.example.org:8080/
}

// ReverseOpen starts a reverse session on a coordinator-opened stream.
type ReverseOpen struct {
	Session SessionID
	Service string
	Remote  netip.AddrPort
}

// ReverseAck tells coordinator a ReverseOpen arrived.
type ReverseAck struct{}

// RequestLog reports one public HTTP request coordinator relayed to an
// exposed app (flow step 8).
type RequestLog struct {
	Session  SessionID
	Service  string
	Remote   netip.AddrPort // the public client
	Method   string
	Target   string // request-target, cut to maxTargetLen bytes
	Status   uint16
	Up, Down uint64 // body bytes: public client → app, app → public client
	Duration time.Duration
	TLS      bool
	Outcome  string
}

// Bounds on RequestLog fields; longer values are cut when sent.
const (
	maxMethodLen  = 64
	maxOutcomeLen = 256
)

// frame is implemented by every control message.
type frame interface {
	msgType() uint8
	appendBody(b []byte) []byte
}

func (*Hello) msgType() uint8      { return msgHello }
func (*Welcome) msgType() uint8    { return msgWelcome }
func (*AddrUpdate) msgType() uint8 { return msgAddrUpdate }
func (m *Open) msgType() uint8 {
	if m.Fast {
		return msgFastOpen
	}
	return msgOpen
}
func (*OpenResult) msgType() uint8     { return msgOpenResult }
func (*Register) msgType() uint8       { return msgRegister }
func (*RegisterResult) msgType() uint8 { return msgRegisterResult }
func (*ReverseOpen) msgType() uint8    { return msgReverseOpen }
func (*ReverseAck) msgType() uint8     { return msgReverseAck }
func (*WorkerHello) msgType() uint8    { return msgWorkerHello }
func (*Job) msgType() uint8            { return msgJob }
func (*JobResult) msgType() uint8      { return msgJobResult }
func (*RequestLog) msgType() uint8     { return msgRequestLog }

func (m *RequestLog) appendBody(b []byte) []byte {
	b = append(b, m.Session[:]...)
	b = appendString(b, cut(m.Service, maxNameLen))
	b = appendAddr(b, m.Remote)
	b = appendString(b, cut(m.Method, maxMethodLen))
	b = appendString(b, cut(m.Target, maxTargetLen))
	b = binary.BigEndian.AppendUint16(b, m.Status)
	b = binary.BigEndian.AppendUint64(b, m.Up)
	b = binary.BigEndian.AppendUint64(b, m.Down)
	b = binary.BigEndian.AppendUint64(b, uint64(max(m.Duration, 0)/time.Microsecond))
	var flags uint8
	if m.TLS {
		flags |= 1
	}
	b = append(b, flags)
	return appendString(b, cut(m.Outcome, maxOutcomeLen))
}

// cut returns s's first n bytes at most.
func cut(s string, n int) string { return s[:min(len(s), n)] }

func (m *Register) appendBody(b []byte) []byte {
	b = append(b, uint8(m.Kind))
	b = appendString(b, m.Name)
	b = binary.BigEndian.AppendUint16(b, m.Port)
	if m.HostHeader != "" || m.BasicAuth != nil || len(m.AllowFrom) > 0 {
		b = appendString(b, m.HostHeader)
	}
	if m.BasicAuth != nil {
		b = appendString(b, string(m.BasicAuth.User[:])+string(m.BasicAuth.Password[:]))
	} else if len(m.AllowFrom) > 0 {
		b = appendString(b, "")
	}
	if len(m.AllowFrom) > 0 {
		list := make([]string, len(m.AllowFrom))
		for i, p := range m.AllowFrom {
			list[i] = p.String()
		}
		b = appendString(b, strings.Join(list, ","))
	}
	return b
}

func (m *RegisterResult) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(m.Code))
	b = appendString(b, m.Reason)
	b = binary.BigEndian.AppendUint16(b, m.Port)
	return appendString(b, m.URL)
}

func (m *ReverseOpen) appendBody(b []byte) []byte {
	b = append(b, m.Session[:]...)
	b = appendString(b, m.Service)
	return appendAddr(b, m.Remote)
}

func (*ReverseAck) appendBody(b []byte) []byte { return b }

func (m *Hello) appendBody(b []byte) []byte {
	b = append(b, m.Version)
	b = appendString(b, m.Token)
	b = appendAddr(b, m.PublicAddr)
	b = append(b, m.CertSHA256[:]...)
	return appendString(b, m.ClientName)
}

func (m *Welcome) appendBody(b []byte) []byte {
	b = append(b, m.Version)
	b = appendAddr(b, m.ObservedAddr)
	return appendAddr(b, m.DialBackFrom)
}

func (m *AddrUpdate) appendBody(b []byte) []byte { return appendAddr(b, m.PublicAddr) }

func (m *Open) appendBody(b []byte) []byte {
	b = append(b, m.Session[:]...)
	return appendString(b, m.Target)
}

func (m *OpenResult) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(m.Code))
	b = appendString(b, m.Reason)
	return appendAddr(b, m.PunchTo)
}

func (m *WorkerHello) appendBody(b []byte) []byte {
	b = append(b, m.Version)
	b = appendString(b, m.Token)
	b = append(b, uint8(len(m.Advertise)))
	for _, a := range m.Advertise {
		b = appendAddr(b, a)
	}
	return b
}

func (m *Job) appendBody(b []byte) []byte {
	b = append(b, m.Session[:]...)
	b = appendString(b, m.Target)
	b = append(b, m.CertSHA256[:]...)
	b = appendAddr(b, m.Reported)
	return appendAddr(b, m.Observed)
}

func (m *JobResult) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(m.Code))
	b = appendString(b, m.Reason)
	return appendAddr(b, m.PunchTo)
}

// AppendFrame appends the framed encoding of m to b.
func AppendFrame(b []byte, m frame) ([]byte, error) {
	start := len(b)
	b = append(b, m.msgType(), 0, 0)
	b = m.appendBody(b)
	n := len(b) - start - 3
	if n > MaxFrameSize {
		return b[:start], fmt.Errorf("%w: frame body of %d bytes exceeds %d", ErrProtocol, n, MaxFrameSize)
	}
	binary.BigEndian.PutUint16(b[start+1:], uint16(n))
	return b, nil
}

// WriteFrame writes one framed message to w in a single Write.
func WriteFrame(w io.Writer, m frame) error {
	b, err := AppendFrame(make([]byte, 0, 128), m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadFrame reads one framed message from r: a pointer to one of the
// message types above.
func ReadFrame(r io.Reader) (any, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[1:]))
	if n > MaxFrameSize {
		return nil, fmt.Errorf("%w: frame body of %d bytes exceeds %d", ErrProtocol, n, MaxFrameSize)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("%w: truncated frame: %w", ErrProtocol, err)
	}
	return ParseFrame(hdr[0], body)
}

// ParseFrame decodes the body of a message of type typ.
func ParseFrame(typ uint8, body []byte) (any, error) {
	d := decoder{b: body}
	var m any
	switch typ {
	case msgHello:
		h := &Hello{Version: d.u8(), Token: d.str(maxTokenLen), PublicAddr: d.addr()}
		copy(h.CertSHA256[:], d.bytes(32))
		h.ClientName = d.str(maxNameLen)
		m = h
	case msgWelcome:
		m = &Welcome{Version: d.u8(), ObservedAddr: d.addr(), DialBackFrom: d.addr()}
	case msgAddrUpdate:
		m = &AddrUpdate{PublicAddr: d.addr()}
	case msgOpen, msgFastOpen:
		o := &Open{Fast: typ == msgFastOpen}
		copy(o.Session[:], d.bytes(SessionIDSize))
		o.Target = d.str(maxTargetLen)
		m = o
	case msgOpenResult:
		m = &OpenResult{Code: ErrorCode(d.u16()), Reason: d.str(maxReasonLen), PunchTo: d.addr()}
	case msgWorkerHello:
		h := &WorkerHello{Version: d.u8(), Token: d.str(maxTokenLen)}
		n := int(d.u8())
		if n > maxAdvertise {
			return nil, fmt.Errorf("%w: worker hello advertises %d addresses, at most %d", ErrProtocol, n, maxAdvertise)
		}
		for range n {
			h.Advertise = append(h.Advertise, d.addr())
		}
		m = h
	case msgJob:
		j := &Job{}
		copy(j.Session[:], d.bytes(SessionIDSize))
		j.Target = d.str(maxTargetLen)
		copy(j.CertSHA256[:], d.bytes(32))
		j.Reported, j.Observed = d.addr(), d.addr()
		m = j
	case msgJobResult:
		m = &JobResult{Code: ErrorCode(d.u16()), Reason: d.str(maxReasonLen), PunchTo: d.addr()}
	case msgRegister:
		r := &Register{Kind: ServiceKind(d.u8()), Name: d.str(maxNameLen), Port: d.u16()}
		if len(d.b) > 0 {
			r.HostHeader = d.str(maxNameLen)
		}
		if len(d.b) > 0 {
			switch a := d.str(64); {
			case d.err != nil || a == "":
			case len(a) != 64:
				return nil, fmt.Errorf("%w: register: basic auth of %d bytes, want 64", ErrProtocol, len(a))
			default:
				r.BasicAuth = &AuthHash{}
				copy(r.BasicAuth.User[:], a[:32])
				copy(r.BasicAuth.Password[:], a[32:])
			}
		}
		if len(d.b) > 0 {
			if list := d.str(maxTargetLen); d.err == nil && list != "" {
				prefixes, err := ParseAllowFrom(list)
				if err != nil {
					return nil, fmt.Errorf("%w: register: %w", ErrProtocol, err)
				}
				r.AllowFrom = prefixes
			}
		}
		m = r
	case msgRegisterResult:
		m = &RegisterResult{Code: ErrorCode(d.u16()), Reason: d.str(maxReasonLen), Port: d.u16(), URL: d.str(maxTargetLen)}
	case msgReverseOpen:
		r := &ReverseOpen{}
		copy(r.Session[:], d.bytes(SessionIDSize))
		r.Service, r.Remote = d.str(maxNameLen), d.addr()
		m = r
	case msgReverseAck:
		m = &ReverseAck{}
	case msgRequestLog:
		r := &RequestLog{}
		copy(r.Session[:], d.bytes(SessionIDSize))
		r.Service, r.Remote = d.str(maxNameLen), d.addr()
		r.Method, r.Target = d.str(maxMethodLen), d.str(maxTargetLen)
		r.Status, r.Up, r.Down = d.u16(), d.u64(), d.u64()
		r.Duration = time.Duration(min(d.u64(), math.MaxInt64/uint64(time.Microsecond))) * time.Microsecond
		flags := d.u8()
		r.TLS = flags&1 != 0
		r.Outcome = d.str(maxOutcomeLen)
		m = r
	default:
		return nil, fmt.Errorf("%w: unknown message type 0x%02x", ErrProtocol, typ)
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: message type 0x%02x: %w", ErrProtocol, typ, d.err)
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: message type 0x%02x: %d trailing bytes", ErrProtocol, typ, len(d.b))
	}
	return m, nil
}

// AppendSessionHeader appends the header that starts a dial-back stream.
func AppendSessionHeader(b []byte, id SessionID) []byte {
	b = append(b, sessionMagic, ProtocolVersion)
	return append(b, id[:]...)
}

// ParseSessionHeader decodes a session header of exactly SessionHeaderSize
// bytes.
func ParseSessionHeader(b []byte) (SessionID, error) {
	var id SessionID
	if len(b) != SessionHeaderSize {
		return id, fmt.Errorf("%w: session header is %d bytes, want %d", ErrProtocol, len(b), SessionHeaderSize)
	}
	if b[0] != sessionMagic {
		return id, fmt.Errorf("%w: bad session header magic 0x%02x", ErrProtocol, b[0])
	}
	if b[1] != ProtocolVersion {
		return id, fmt.Errorf("%w: session header version %d, want %d", ErrVersion, b[1], ProtocolVersion)
	}
	copy(id[:], b[2:])
	return id, nil
}

// ReadSessionHeader reads a session header from r.
func ReadSessionHeader(r io.Reader) (SessionID, error) {
	var b [SessionHeaderSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return SessionID{}, fmt.Errorf("read session header: %w", err)
	}
	return ParseSessionHeader(b[:])
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

func appendAddr(b []byte, a netip.AddrPort) []byte {
	if !a.IsValid() {
		return appendString(b, "")
	}
	return appendString(b, a.String())
}

var errShort = errors.New("body too short")

// decoder reads fields from a frame body; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.err = errShort
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	if v := d.bytes(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if v := d.bytes(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.bytes(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) str(limit int) string {
	n := int(d.u16())
	if d.err == nil && n > limit {
		d.err = fmt.Errorf("string of %d bytes exceeds %d", n, limit)
		return ""
	}
	return string(d.bytes(n))
}

func (d *decoder) addr() netip.AddrPort {
	s := d.str(64)
	if d.err != nil || s == "" {
		return netip.AddrPort{}
	}
	a, err := netip.ParseAddrPort(s)
	if err != nil {
		d.err = fmt.Errorf("bad address %q: %w", s, err)
	}
	return a
}
