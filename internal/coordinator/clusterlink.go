package coordinator

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/quictun"
)

// The inter-node link: a node that receives a public connection for a
// name another node's client holds forwards it to that node over QUIC,
// one stream per public connection. Each connection between nodes starts
// with a proof both ways of the cluster token, bound to the TLS session
// (an HMAC of its exported keying material), so the TLS certificates can
// be throwaway ones and a man in the middle without the token learns
// nothing and forwards nothing.
//
// A forward stream: the header, then the public connection's bytes.
//
//	header: version (1 byte, 1) | kind (1 byte: 'n' name, 'p' port,
//	        'h' a whole public HTTP connection for a name) |
//	        key length (1 byte) | key (a name, or a port in decimal) |
//	        remote length (1 byte) | the public client's ip:port
//	answer: status (2 bytes: 0 the app is reached, else the HTTP status
//	        to show) | reason length (2 bytes) | reason
//
// then the bytes both ways.

const (
	clusterALPN        = "quictunnel-cluster/1"
	clusterLinkVersion = 1
	clusterProofLabel  = "quictunnel cluster proof"
	clusterAuthTimeout = 5 * time.Second
	// clusterAnswerTimeout bounds the wait for the owner node's answer to
	// a forward: a node that died leaves the public with a 502, not a
	// hang. The owner answers once its client has (see quictun's reverse
	// session set-up), or at once for a whole HTTP connection.
	clusterAnswerTimeout = 15 * time.Second
	// clusterMaxStreams bounds the public connections one node forwards to
	// another at once.
	clusterMaxStreams = 10000
	maxReasonLen      = 1024
)

// forwardHeader names what a forward stream is for.
type forwardHeader struct {
	name   string // or
	port   uint16
	http   bool // the whole public HTTP connection, for the node's HTTP proxy (clustersniff.go)
	remote netip.AddrPort
}

func appendForwardHeader(b []byte, h forwardHeader) []byte {
	kind, key := byte('n'), h.name
	switch {
	case h.port != 0:
		kind, key = 'p', fmt.Sprint(h.port)
	case h.http:
		kind = 'h'
	}
	remote := h.remote.String()
	b = append(b, clusterLinkVersion, kind, byte(len(key)))
	b = append(b, key...)
	b = append(b, byte(len(remote)))
	return append(b, remote...)
}

func readForwardHeader(r io.Reader) (forwardHeader, error) {
	var h forwardHeader
	var fixed [3]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return h, err
	}
	if fixed[0] != clusterLinkVersion {
		return h, fmt.Errorf("forward header version %d, want %d", fixed[0], clusterLinkVersion)
	}
	key := make([]byte, fixed[2])
	if _, err := io.ReadFull(r, key); err != nil {
		return h, err
	}
	var n [1]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return h, err
	}
	remote := make([]byte, n[0])
	if _, err := io.ReadFull(r, remote); err != nil {
		return h, err
	}
	ap, err := netip.ParseAddrPort(string(remote))
	if err != nil {
		return h, fmt.Errorf("forward header remote: %w", err)
	}
	h.remote = ap
	switch fixed[1] {
	case 'n', 'h':
		h.name, h.http = string(key), fixed[1] == 'h'
	case 'p':
		var p uint16
		if _, err := fmt.Sscan(string(key), &p); err != nil || p == 0 {
			return h, fmt.Errorf("forward header port %q", key)
		}
		h.port = p
	default:
		return h, fmt.Errorf("forward header kind %q", fixed[1])
	}
	return h, nil
}

func writeForwardAnswer(w io.Writer, status int, reason string) error {
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	b := binary.BigEndian.AppendUint16(nil, uint16(status))
	b = binary.BigEndian.AppendUint16(b, uint16(len(reason)))
	_, err := w.Write(append(b, reason...))
	return err
}

func readForwardAnswer(r io.Reader) (status int, reason string, err error) {
	var fixed [4]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return 0, "", err
	}
	n := binary.BigEndian.Uint16(fixed[2:])
	if n > maxReasonLen {
		return 0, "", fmt.Errorf("forward answer reason of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, "", err
	}
	return int(binary.BigEndian.Uint16(fixed[:2])), string(b), nil
}

// clusterLink is this node's end of the inter-node connections: it
// accepts the other nodes' forwards and dials them to forward its own.
type clusterLink struct {
	token []byte
	tr    *quic.Transport
	udp   *net.UDPConn
	tls   *tls.Config
	log   *slog.Logger
	// serve handles one authenticated forward stream.
	serve func(ctx context.Context, str *quic.Stream, remote net.Addr)

	mu    sync.Mutex
	conns map[string]*quic.Conn // to other nodes, by address
	wg    sync.WaitGroup
}

func newClusterLink(listen, token string, log *slog.Logger) (*clusterLink, error) {
	ua, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return nil, &ConfigError{"Cluster.Listen", err.Error()}
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("cluster listen %s: %w", listen, err)
	}
	cert, err := throwawayCert()
	if err != nil {
		udp.Close()
		return nil, err
	}
	return &clusterLink{token: []byte(token), tr: &quic.Transport{Conn: udp}, udp: udp, log: log, conns: map[string]*quic.Conn{},
		tls: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, NextProtos: []string{clusterALPN},
			InsecureSkipVerify: true}}, nil // the token proof authenticates, bound to this TLS session
}

// throwawayCert makes a self-signed certificate for the link's TLS.
func throwawayCert() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func clusterQUICConfig() *quic.Config {
	// A node that dies is noticed within MaxIdleTimeout (and sooner when
	// its lease ends: prune).
	return &quic.Config{MaxIncomingStreams: clusterMaxStreams, KeepAlivePeriod: 2 * time.Second, MaxIdleTimeout: 10 * time.Second}
}

// proof is side's HMAC of the TLS session's keying material with the token.
func (l *clusterLink) proof(cs tls.ConnectionState, side string) ([]byte, error) {
	ekm, err := cs.ExportKeyingMaterial(clusterProofLabel, []byte(side), 32)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, l.token)
	m.Write(ekm)
	return m.Sum(nil), nil
}

// run accepts the other nodes' connections until ctx ends, then closes
// every connection and the socket.
func (l *clusterLink) run(ctx context.Context) {
	defer l.close()
	ln, err := l.tr.Listen(l.tls, clusterQUICConfig())
	if err != nil {
		l.log.Error("inter-node link not served", "err", err)
		return
	}
	defer ln.Close()
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		l.wg.Go(func() { l.serveConn(ctx, conn) })
	}
}

// serveConn checks a node's proof, answers with its own, and serves its
// forward streams.
func (l *clusterLink) serveConn(ctx context.Context, conn *quic.Conn) {
	stop := context.AfterFunc(ctx, func() { conn.CloseWithError(quic.ApplicationErrorCode(quictun.CodeShutdown), "node shutting down") })
	defer stop()
	if err := l.acceptProof(ctx, conn); err != nil {
		l.log.Warn("inter-node connection refused", "peer", conn.RemoteAddr(), "err", err)
		conn.CloseWithError(quic.ApplicationErrorCode(quictun.CodeUnauthorized), "cluster token proof failed")
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		wg.Go(func() { l.serve(ctx, str, conn.RemoteAddr()) })
	}
}

func (l *clusterLink) acceptProof(ctx context.Context, conn *quic.Conn) error {
	actx, cancel := context.WithTimeout(ctx, clusterAuthTimeout)
	defer cancel()
	str, err := conn.AcceptStream(actx)
	if err != nil {
		return err
	}
	defer str.Close()
	str.SetDeadline(time.Now().Add(clusterAuthTimeout))
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(str, got); err != nil {
		return err
	}
	cs := conn.ConnectionState().TLS
	want, err := l.proof(cs, "client")
	if err != nil {
		return err
	}
	if !hmac.Equal(got, want) {
		return errors.New("wrong cluster token")
	}
	mine, err := l.proof(cs, "server")
	if err != nil {
		return err
	}
	_, err = str.Write(mine)
	return err
}

// open opens a forward stream to the node at addr, dialing (and proving)
// a connection first if there is none.
func (l *clusterLink) open(ctx context.Context, addr string) (*quic.Stream, error) {
	conn, err := l.conn(ctx, addr)
	if err != nil {
		return nil, err
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		l.drop(addr, conn)
		return nil, fmt.Errorf("forward to node %s: %w", addr, err)
	}
	return str, nil
}

func (l *clusterLink) drop(addr string, conn *quic.Conn) {
	l.mu.Lock()
	if l.conns[addr] == conn {
		delete(l.conns, addr)
	}
	l.mu.Unlock()
}

// conn returns the proven connection to addr, dialing it if needed. Dials
// are serialised: there are few nodes.
func (l *clusterLink) conn(ctx context.Context, addr string) (*quic.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.conns[addr]; c != nil && c.Context().Err() == nil {
		return c, nil
	}
	if l.conns == nil {
		return nil, net.ErrClosed
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("node address %s: %w", addr, err)
	}
	dctx, cancel := context.WithTimeout(ctx, clusterAuthTimeout)
	defer cancel()
	c, err := l.tr.Dial(dctx, ua, l.tls, clusterQUICConfig())
	if err != nil {
		return nil, fmt.Errorf("dial node %s: %w", addr, err)
	}
	if err := l.prove(dctx, c); err != nil {
		c.CloseWithError(quic.ApplicationErrorCode(quictun.CodeUnauthorized), "cluster token proof failed")
		return nil, fmt.Errorf("node %s: %w", addr, err)
	}
	l.conns[addr] = c
	return c, nil
}

func (l *clusterLink) prove(ctx context.Context, c *quic.Conn) error {
	str, err := c.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	defer str.Close()
	if dl, ok := ctx.Deadline(); ok {
		str.SetDeadline(dl)
	}
	cs := c.ConnectionState().TLS
	mine, err := l.proof(cs, "client")
	if err != nil {
		return err
	}
	if _, err := str.Write(mine); err != nil {
		return err
	}
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(str, got); err != nil {
		return fmt.Errorf("no cluster token proof: %w", err)
	}
	want, err := l.proof(cs, "server")
	if err != nil {
		return err
	}
	if !hmac.Equal(got, want) {
		return errors.New("wrong cluster token")
	}
	return nil
}

// prune closes the connections to nodes no longer registered (alive
// lists the addresses of those that are).
func (l *clusterLink) prune(alive map[string]bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for addr, c := range l.conns {
		if !alive[addr] {
			c.CloseWithError(quic.ApplicationErrorCode(quictun.CodeShutdown), "node left the cluster")
			delete(l.conns, addr)
		}
	}
}

// close ends every connection and waits for their streams.
func (l *clusterLink) close() {
	l.mu.Lock()
	for _, c := range l.conns {
		c.CloseWithError(quic.ApplicationErrorCode(quictun.CodeShutdown), "node shutting down")
	}
	l.conns = nil
	l.mu.Unlock()
	l.wg.Wait()
	l.tr.Close()
	l.udp.Close()
}

// Addr is the link's bound address.
func (l *clusterLink) Addr() net.Addr { return l.udp.LocalAddr() }

// streamConn adapts a forward stream to net.Conn, with half-close.
type streamConn struct {
	*quic.Stream
	local, remote net.Addr
}

func (c *streamConn) LocalAddr() net.Addr  { return c.local }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

// CloseWrite sends FIN; the peer having stopped reading with CodeOK (it
// had all it wanted) is no error.
func (c *streamConn) CloseWrite() error {
	err := c.Stream.Close()
	if err != nil {
		var se *quic.StreamError
		if _, werr := c.Stream.Write(nil); errors.As(werr, &se) && se.Remote && quictun.ErrorCode(se.ErrorCode) == quictun.CodeOK {
			return nil
		}
	}
	return err
}

func (c *streamConn) CloseRead() error {
	c.Stream.CancelRead(quic.StreamErrorCode(quictun.CodeOK))
	return nil
}
func (c *streamConn) Close() error {
	err := c.Stream.Close()
	c.Stream.CancelRead(quic.StreamErrorCode(quictun.CodeOK))
	return err
}
