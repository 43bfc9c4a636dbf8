package quictun

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"sync/atomic"
	"testing"
	"time"
)

// TestRenewedCertificateKeepsDialBacks: with GetCertificate, a client that
// connected before the certificate was renewed still gets its dial-backs,
// which present the certificate it pinned, not the renewed one (relay is
// off, so a refused dial-back would fail the session).
func TestRenewedCertificateKeepsDialBacks(t *testing.T) {
	var current atomic.Pointer[tls.Certificate]
	first := getPKI(t).cert
	current.Store(&first)
	h := newHarness(t, harnessOpts{serverMod: func(c *ServerConfig) {
		c.Certificate = tls.Certificate{}
		c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return current.Load(), nil }
		c.DisableRelay, c.DialBackTimeout = true, 5*time.Second
	}})
	waitConnected(t, h.client)
	renewed := selfSignedCert(t)
	current.Store(&renewed)

	target := echoServer(t, "127.0.0.1")
	conn, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatalf("Dial after the renewal: %v", err)
	}
	defer conn.Close()
	echo(t, conn, "after renewal")
	if st := h.server.Stats(); st.DialBackSessions != 1 {
		t.Errorf("server stats = %+v: want the session over a dial-back", st)
	}
}

// selfSignedCert is a certificate for localhost other than getPKI's.
func selfSignedCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
