package httpproxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestDrain checks that Drain closes a keep-alive connection waiting for
// its next request, lets a tunnel in progress go on until it ends, and
// stops accepting.
func TestDrain(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer target.Close()
	echo, _ := net.Listen("tcp", "127.0.0.1:0")
	defer echo.Close()
	go func() {
		c, err := echo.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	p, proxy := startProxy(t, Config{})
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		return c, bufio.NewReader(c)
	}
	// A keep-alive connection, idle after one exchange.
	idle, idleR := dial()
	defer idle.Close()
	io.WriteString(idle, "GET "+target.URL+"/ HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(idleR, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	// A tunnel in progress.
	tun, tunR := dial()
	defer tun.Close()
	io.WriteString(tun, "CONNECT "+echo.Addr().String()+" HTTP/1.1\r\n\r\n")
	if resp, err := http.ReadResponse(tunR, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v", err)
	}

	drained := make(chan error, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	go func() { drained <- p.Drain(ctx) }()
	if _, err := idleR.ReadByte(); err != io.EOF {
		t.Fatalf("idle keep-alive connection: read %v, want EOF (closed by Drain)", err)
	}
	// The tunnel still works while draining.
	io.WriteString(tun, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(tunR, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("tunnel during drain: %q %v", buf, err)
	}
	select {
	case err := <-drained:
		t.Fatalf("Drain returned %v with a tunnel open", err)
	default:
	}
	if c, err := net.Dial("tcp", proxy); err == nil {
		c.Close()
		t.Error("proxy still accepts while draining")
	}
	tun.Close()
	if err := <-drained; err != nil {
		t.Fatalf("Drain: %v", err)
	}
}
