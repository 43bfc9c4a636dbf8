package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var server net.Conn
	var wg sync.WaitGroup
	wg.Go(func() { server, _ = ln.Accept() })
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	t.Cleanup(func() { client.Close(); server.Close() })
	return client.(*net.TCPConn), server.(*net.TCPConn)
}

// TestSpliceHalfClose: each direction ends on its own; bytes keep flowing
// the other way after one side finished sending.
func TestSpliceHalfClose(t *testing.T) {
	browser, proxyIn := tcpPair(t)
	proxyOut, target := tcpPair(t)
	done := make(chan Stats, 1)
	go func() {
		st, err := Splice(t.Context(), proxyIn, proxyOut)
		if err != nil {
			t.Errorf("Splice: %v", err)
		}
		done <- st
	}()
	browser.Write([]byte("request"))
	browser.CloseWrite()
	got, err := io.ReadAll(target) // EOF arrives: half-close propagated
	if err != nil || string(got) != "request" {
		t.Fatalf("target read %q, %v", got, err)
	}
	target.Write([]byte("response after half-close"))
	target.CloseWrite()
	got, err = io.ReadAll(browser)
	if err != nil || string(got) != "response after half-close" {
		t.Fatalf("browser read %q, %v", got, err)
	}
	st := <-done
	if st.AToB != 7 || st.BToA != 25 {
		t.Fatalf("stats %+v", st)
	}
}

// TestSpliceResetOnFailure: when one side fails, the other is reset, not
// closed cleanly, so a truncated transfer is seen as an error.
func TestSpliceResetOnFailure(t *testing.T) {
	browser, proxyIn := tcpPair(t)
	proxyOut, target := tcpPair(t)
	done := make(chan error, 1)
	go func() { _, err := Splice(t.Context(), proxyIn, proxyOut); done <- err }()
	target.Write([]byte("partial"))
	target.SetLinger(0)
	target.Close() // RST
	buf := make([]byte, 7)
	io.ReadFull(browser, buf)
	browser.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := browser.Read(buf)
	if err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("browser saw %v, want a reset", err)
	}
	if err := <-done; err == nil {
		t.Fatal("Splice reported a clean end for a relay the target reset")
	}
}

func TestSpliceContextCancel(t *testing.T) {
	_, proxyIn := tcpPair(t)
	proxyOut, _ := tcpPair(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { _, err := Splice(ctx, proxyIn, proxyOut); done <- err }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Splice = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Splice did not end on cancel")
	}
}
