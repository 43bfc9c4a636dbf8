package httpproxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestMaxConns: at MaxConns open connections the proxy accepts no more;
// the next one is served as soon as one closes.
func TestMaxConns(t *testing.T) {
	p, addr := startProxy(t, Config{MaxConns: 2, Status: func() []byte { return []byte(`{}`) }})
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	status := func(c net.Conn) int {
		t.Helper()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "GET /status HTTP/1.1\r\nHost: proxy\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	first, second := dial(), dial()
	if status(first) != 200 || status(second) != 200 {
		t.Fatal("the first two connections were not served")
	}
	third := dial() // the kernel completes the handshake; the proxy does not accept it
	io.WriteString(third, "GET /status HTTP/1.1\r\nHost: proxy\r\n\r\n")
	waitUntil(t, "accepting to wait", func() bool { return p.Stats().ConnLimitWaits == 1 })
	if n := p.Stats().ActiveConns; n != 2 {
		t.Fatalf("%d connections open, want 2 (the bound)", n)
	}
	first.Close()
	third.SetDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(third), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the waiting connection after one closed: %v, %v", resp, err)
	}
	resp.Body.Close()
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
