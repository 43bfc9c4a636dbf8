package service

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestKeyPairReload(t *testing.T) {
	certs := filepath.Join("..", "..", "testdata", "certs")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	use := func(name string) {
		for from, to := range map[string]string{name + ".pem": cert, name + "-key.pem": key} {
			b, err := os.ReadFile(filepath.Join(certs, from))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(to, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	served := func(k *KeyPair) []byte {
		c, err := k.GetCertificate(nil)
		if err != nil || c == nil {
			t.Fatalf("GetCertificate: %v, %v", c, err)
		}
		return c.Certificate[0]
	}

	use("coordinator")
	k, err := LoadKeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	first := served(k)

	os.WriteFile(cert, []byte("garbage"), 0o600)
	if err := k.Reload(); err == nil {
		t.Fatal("Reload accepted a file without a certificate")
	}
	if !bytes.Equal(served(k), first) {
		t.Fatal("a failed reload replaced the certificate in use")
	}

	use("other")
	if err := k.Reload(); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(served(k), first) {
		t.Fatal("Reload kept the old certificate")
	}
	if _, err := LoadKeyPair(filepath.Join(dir, "missing.pem"), key); err == nil {
		t.Fatal("LoadKeyPair accepted a missing file")
	}
}
