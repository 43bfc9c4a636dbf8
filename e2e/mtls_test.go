package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// writeClientPKI makes a client CA and a client certificate for cn signed
// by it, as PEM files in dir: ca.pem, client.pem, client-key.pem.
func writeClientPKI(t *testing.T, dir, cn string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "client CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"ca.pem":         {Type: "CERTIFICATE", Bytes: caDER},
		"client.pem":     {Type: "CERTIFICATE", Bytes: der},
		"client-key.pem": {Type: "PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestClientCertificateBinaries: coordinator --client-ca with a tokens
// file naming the certificate's client, localproxy --client-cert without a
// token: requests go through; the grant of the entry applies, also after
// SIGHUP reloads the file.
func TestClientCertificateBinaries(t *testing.T) {
	dir := t.TempDir()
	writeClientPKI(t, dir, "alice-laptop")
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte("tokens:\n  - client: alice-laptop\n    names: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	quicPort, stunPort, proxyPort := freeUDPPort(t), freeUDPPort(t), freeTCPPort(t)
	certs, _ := filepath.Abs(certsDir())
	coord := start(t, nil, "coordinator", "--listen", "127.0.0.1:"+strconv.Itoa(quicPort),
		"--reporter-listen", "127.0.0.1:"+strconv.Itoa(stunPort),
		"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
		"--client-ca", filepath.Join(dir, "ca.pem"), "--tokens", tokens, "--allow-private-targets")
	start(t, nil, "localproxy", "--listen", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort), "--reporter", "127.0.0.1:"+strconv.Itoa(stunPort),
		"--client-cert", filepath.Join(dir, "client.pem"), "--client-key", filepath.Join(dir, "client-key.pem"),
		"--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost")
	waitFor(t, "the certificate client connected", func() bool {
		return strings.Contains(coord.out.String(), "client connected") && strings.Contains(coord.out.String(), "client=alice-laptop")
	})

	target := startTarget(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello alice") }))
	proxyURL, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(proxyPort))
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	get := func() (int, string) {
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Get(target.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}
	if code, body := get(); code != http.StatusOK || body != "hello alice" {
		t.Fatalf("request through a certificate client: %d %q", code, body)
	}

	if err := os.WriteFile(tokens, []byte("tokens:\n  - client: alice-laptop\n    forward: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := coord.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the tokens file reloaded", func() bool { return strings.Contains(coord.out.String(), "tokens file reloaded") })
	if code, body := get(); code != http.StatusForbidden {
		t.Fatalf("request after the entry lost the forward proxy: %d %q, want 403", code, body)
	}
}
