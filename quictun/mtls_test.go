package quictun

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"sync"
	"testing"
	"time"
)

// testCA makes a CA and issues client certificates from it.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issue returns a client certificate for common name cn (empty: none)
// and DNS names dns.
func (ca *testCA) issue(t *testing.T, cn string, dns ...string) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn}, DNSNames: dns,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestClientCertificates: with ClientCAs, clients authenticate by a
// certificate from that CA, named by its common name or first DNS name;
// a client without one (even with the right token), with one from
// another CA, or whose identity is not authorized is refused.
func TestClientCertificates(t *testing.T) {
	ca, other := newTestCA(t, "client CA"), newTestCA(t, "another CA")
	tests := []struct {
		name     string
		cert     *tls.Certificate
		wantID   string // identity authorized; "" when refused
		wantAuth bool   // refused with ErrAuthFailed (else the handshake fails)
	}{
		{"common name", ca.issue(t, "alice"), "alice", false},
		{"first DNS name", ca.issue(t, "", "bob.example", "other.example"), "bob.example", false},
		{"no certificate, right token", nil, "", true},
		{"identity not authorized", ca.issue(t, "mallory"), "", true},
		{"another CA", other.issue(t, "alice"), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var asked []string
			h := newHarness(t, harnessOpts{
				serverMod: func(c *ServerConfig) {
					c.ClientCAs = ca.pool()
					c.AuthorizeCert = func(id string) (Grant, bool) {
						mu.Lock()
						asked = append(asked, id)
						mu.Unlock()
						return Grant{Client: "cert-" + id}, id != "mallory"
					}
				},
				clientMod: func(c *ClientConfig) {
					c.Certificate = tt.cert
					if tt.cert != nil {
						c.Token = "" // the certificate is enough
					}
				},
			})
			target := echoServer(t, "127.0.0.1")
			if tt.wantID != "" {
				echoRoundTrip(t, h.client, target, []byte("mutual TLS"))
				mu.Lock()
				defer mu.Unlock()
				if len(asked) != 1 || asked[0] != tt.wantID {
					t.Errorf("AuthorizeCert asked for %q, want [%s]", asked, tt.wantID)
				}
				return
			}
			if tt.wantAuth {
				if err := <-h.clientErr; !errors.Is(err, ErrAuthFailed) {
					t.Fatalf("client Run = %v, want ErrAuthFailed", err)
				}
				h.clientErr <- nil // for the harness's cleanup
			} else if _, err := h.client.Dial(t.Context(), target); !errors.Is(err, ErrCoordinatorUnavailable) {
				t.Fatalf("Dial with a certificate from another CA = %v, want coordinator unavailable", err)
			}
			if st := h.server.Stats(); st.Clients != 0 || st.Sessions != 0 {
				t.Errorf("server %+v: want no client and no session", st)
			}
		})
	}
}

// TestReauthorizeCertificate: Reauthorize disconnects a certificate
// client whose identity is no longer authorized.
func TestReauthorizeCertificate(t *testing.T) {
	ca := newTestCA(t, "client CA")
	var mu sync.Mutex
	allowed := true
	h := newHarness(t, harnessOpts{
		serverMod: func(c *ServerConfig) {
			c.ClientCAs = ca.pool()
			c.AuthorizeCert = func(string) (Grant, bool) { mu.Lock(); defer mu.Unlock(); return Grant{}, allowed }
		},
		clientMod: func(c *ClientConfig) { c.Certificate, c.Token = ca.issue(t, "carol"), "" },
	})
	echoRoundTrip(t, h.client, echoServer(t, "127.0.0.1"), []byte("before"))
	mu.Lock()
	allowed = false
	mu.Unlock()
	if n := h.server.Reauthorize(); n != 1 {
		t.Fatalf("Reauthorize disconnected %d clients, want 1", n)
	}
	if err := <-h.clientErr; !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("client Run = %v, want ErrAuthFailed", err)
	}
	h.clientErr <- nil
}
