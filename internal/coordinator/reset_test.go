package coordinator

import (
	"crypto/tls"
	"path/filepath"
	"testing"
)

func TestStatelessResetKey(t *testing.T) {
	load := func(cert, key string) tls.Certificate {
		t.Helper()
		dir := filepath.Join("..", "..", "testdata", "certs")
		c, err := tls.LoadX509KeyPair(filepath.Join(dir, cert), filepath.Join(dir, key))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	coord := load("coordinator.pem", "coordinator-key.pem")
	a, err := statelessResetKey(nil, coord)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := statelessResetKey(nil, load("coordinator.pem", "coordinator-key.pem"))
	if *a != *b {
		t.Error("the key changes between runs with the same key pair: a restarted coordinator could not reset old connections")
	}
	other, _ := statelessResetKey(nil, load("other.pem", "other-key.pem"))
	if *a == *other {
		t.Error("two key pairs give the same stateless reset key")
	}
	if *a == ([32]byte{}) {
		t.Error("zero key")
	}
}
