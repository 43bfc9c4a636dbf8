package quictun

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// gatedConn is a real TCP connection whose writes are recorded and whose
// first write waits for open.
type gatedConn struct {
	net.Conn
	open   chan struct{}
	mu     sync.Mutex
	writes []int
}

func (g *gatedConn) Write(p []byte) (int, error) {
	<-g.open
	g.mu.Lock()
	g.writes = append(g.writes, len(p))
	g.mu.Unlock()
	return g.Conn.Write(p)
}

func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if a, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if b, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// Frames written while an earlier write is under way go out together in
// one write, in order; a long frame waits for them and goes out on its own;
// Close writes what is still queued.
func TestBatchConn(t *testing.T) {
	a, b := tcpPair(t)
	g := &gatedConn{Conn: a, open: make(chan struct{})}
	bc := newBatchConn(g)
	long := strings.Repeat("L", batchDirect)
	var want bytes.Buffer
	write := func(s string) {
		t.Helper()
		if n, err := bc.Write([]byte(s)); n != len(s) || err != nil {
			t.Errorf("write %d bytes: %d, %v", len(s), n, err)
		}
		want.WriteString(s)
	}
	write("first")
	// The flusher now waits in the gate with "first"; these queue.
	deadline := time.Now().Add(5 * time.Second)
	for {
		bc.mu.Lock()
		taken := len(bc.buf) == 0
		bc.mu.Unlock()
		if taken || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	write("second,")
	write("third,")
	done := make(chan struct{})
	go func() {
		defer close(done)
		write(long)
		write("last")
	}()
	time.Sleep(20 * time.Millisecond) // let the long frame wait (its order is checked either way)
	close(g.open)
	<-done
	if err := bc.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("the peer got %d bytes, want %d in order", len(got), want.Len())
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.writes) != 4 || g.writes[0] != len("first") || g.writes[1] != len("second,third,") || g.writes[2] != len(long) {
		t.Fatalf("writes of %v bytes, want [5 13 %d 4]", g.writes, len(long))
	}
	if _, err := bc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v, want net.ErrClosed", err)
	}
}
