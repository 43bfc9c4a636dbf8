package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/internal/service"
	"quictunnel/internal/udpgro"
	"quictunnel/quictun"
)

// The bulk benchmark's QUIC floor: the plain relays of relay.go with the
// hop between them made one QUIC connection (quic-go, TLS 1.3, the UDP
// socket set up as the tunnel's: GRO reads, GSO sends, 7 MiB buffers, the
// same flow-control windows, one core), one stream per relayed connection.
// There is no session protocol, no dial-back, no HTTP parsing and no
// logging: what this pair costs per GiB is what quic-go itself costs on
// this machine to carry the bytes of a two-process tunnel, which a tunnel
// built on it does not go below.

const relayALPN = "benchdriver-relay"

// relayQUICConfig is the tunnel's own QUIC configuration.
func relayQUICConfig() *quic.Config { return quictun.QUICConfig(10000, 10*time.Second) }

// relayTransport is a QUIC transport on a UDP socket bound to addr, set
// up as the tunnel's.
func relayTransport(addr string) (*quic.Transport, error) {
	udp, err := service.ListenUDP(addr)
	if err != nil {
		return nil, err
	}
	if _, err := service.SetUDPBuffers(udp); err != nil {
		udp.Close()
		return nil, err
	}
	return &quic.Transport{Conn: udpgro.Wrap(udp)}, nil
}

// runQUICRelay serves as the entry relay (cfg.connect: CONNECT over TCP
// in, one QUIC connection to cfg.next out) or the exit relay (QUIC in on
// cfg.listen, TCP to cfg.next out) until the process is stopped.
func runQUICRelay(cfg relayConfig) error {
	runtime.GOMAXPROCS(max(1, runtime.GOMAXPROCS(0)/2))
	ctx := context.Background()
	if cfg.connect {
		tr, err := relayTransport("127.0.0.1:0")
		if err != nil {
			return err
		}
		raddr, err := net.ResolveUDPAddr("udp", cfg.next)
		if err != nil {
			return err
		}
		tlsConf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{relayALPN}} // a benchmark hop on loopback
		// The exit relay may still be starting: QUIC's handshake resends
		// its first packet until the handshake timeout.
		conn, err := tr.Dial(ctx, raddr, tlsConf, relayQUICConfig())
		if err != nil {
			return fmt.Errorf("dial the exit relay: %w", err)
		}
		ln, err := net.Listen("tcp", cfg.listen)
		if err != nil {
			return err
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go relayConn(cfg, c.(*net.TCPConn), func() (halfCloser, error) {
				s, err := conn.OpenStreamSync(ctx)
				if err != nil {
					return nil, err
				}
				return quicHalf{s}, nil
			})
		}
	}
	cert, err := selfSigned()
	if err != nil {
		return err
	}
	tr, err := relayTransport(cfg.listen)
	if err != nil {
		return err
	}
	ln, err := tr.Listen(&tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{relayALPN}}, relayQUICConfig())
	if err != nil {
		return err
	}
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			return err
		}
		go func() {
			for {
				s, err := conn.AcceptStream(ctx)
				if err != nil {
					return
				}
				go relayPair(quicHalf{s}, cfg.next)
			}
		}()
	}
}

// quicHalf is a QUIC stream as a relay end: closing its write side sends
// a FIN; closing it whole also stops reading.
type quicHalf struct{ *quic.Stream }

func (q quicHalf) CloseWrite() error { return q.Stream.Close() }

func (q quicHalf) Close() error {
	q.CancelRead(0)
	return q.Stream.Close()
}

// relayPair connects in to a new TCP connection to next and copies both
// ways until both are done.
func relayPair(in halfCloser, next string) {
	defer in.Close()
	up, err := net.Dial("tcp", next)
	if err != nil {
		return
	}
	defer up.Close()
	copyBoth(up.(*net.TCPConn), in, in)
}

// selfSigned makes a throwaway certificate for the exit relay.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
