package coordinator

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/quic-go/quic-go"
)

// statelessResetKey derives coordinator's QUIC stateless reset key from its
// private key and this host's name. It is the same after a restart, so a
// restarted coordinator answers packets of connections it no longer has
// with a stateless reset and clients reconnect at their next packet instead
// of waiting for the idle timeout. It differs between hosts sharing a key
// pair, so one cannot be used to reset another's connections (RFC 9000
// §10.3.2). Dial-back workers use none. A secret, if given, replaces the
// private key (automatic certificates change key as they renew).
func statelessResetKey(secret []byte, cert tls.Certificate) (*quic.StatelessResetKey, error) {
	der := secret
	if len(der) == 0 {
		var err error
		if der, err = x509.MarshalPKCS8PrivateKey(cert.PrivateKey); err != nil {
			return nil, fmt.Errorf("stateless reset key: %w", err)
		}
	}
	host, _ := os.Hostname()
	mac := hmac.New(sha256.New, der)
	mac.Write([]byte("quictunnel coordinator stateless reset\x00" + host))
	var k quic.StatelessResetKey
	copy(k[:], mac.Sum(nil))
	return &k, nil
}
