package quictun

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// dialBackServerName is the TLS server name coordinator uses when dialing
// back; localproxy's certificate is pinned by hash, not by name.
const dialBackServerName = "localproxy.quictun.invalid"

// newEphemeralCert makes the self-signed certificate localproxy serves its
// tunnel creation service with. It lives only in memory; coordinator learns
// its SHA-256 over the authenticated control connection.
func newEphemeralCert() (tls.Certificate, [32]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, [32]byte{}, fmt.Errorf("generate dial-back key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, [32]byte{}, fmt.Errorf("generate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dialBackServerName},
		DNSNames:     []string{dialBackServerName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, [32]byte{}, fmt.Errorf("create dial-back certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, sha256.Sum256(der), nil
}

// errPinMismatch is returned when a peer presents a certificate other than
// the pinned one.
var errPinMismatch = errors.New("peer certificate does not match the pinned certificate")

// verifyPinnedHash returns a VerifyPeerCertificate callback accepting only
// a leaf whose SHA-256 is want.
func verifyPinnedHash(want [32]byte) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 || sha256.Sum256(raw[0]) != want {
			return errPinMismatch
		}
		return nil
	}
}

// verifyPinnedLeaf returns a VerifyPeerCertificate callback accepting only
// the exact leaf that pinned returns (nil accepts nothing).
func verifyPinnedLeaf(pinned func() []byte) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		want := pinned()
		if len(raw) == 0 || want == nil || !bytes.Equal(raw[0], want) {
			return errPinMismatch
		}
		return nil
	}
}
