package quictun

import (
	"testing"

	"github.com/quic-go/quic-go"
)

func TestConnRefs(t *testing.T) {
	a, b := new(quic.Conn), new(quic.Conn) // identities only: never used
	var r connRefs
	if !r.retire(a) {
		t.Fatal("a connection without sessions is to be closed when retired")
	}
	r.add(b)
	r.add(b)
	if r.retire(b) {
		t.Fatal("a connection with sessions was to be closed when retired")
	}
	if r.done(b) {
		t.Fatal("closed with a session left")
	}
	if !r.done(b) {
		t.Fatal("a retired connection was not to be closed after its last session")
	}
	r.add(a)
	if r.done(a) {
		t.Fatal("a connection not retired was to be closed after its last session")
	}
	r.add(a)
	r.retire(a)
	if got := r.takeRetired(); len(got) != 1 || got[0] != a {
		t.Fatalf("takeRetired = %v, want [a]", got)
	}
	if got := r.takeRetired(); len(got) != 0 {
		t.Fatalf("takeRetired again = %v, want none", got)
	}
}
