package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
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

// peekConn is a connection read through a bufio.Reader, whose Peek blocks
// like a QUIC stream's: it takes pump's Peek path.
type peekConn struct {
	*net.TCPConn
	r *bufio.Reader
}

func (p *peekConn) Read(b []byte) (int, error) { return p.r.Read(b) }

func (p *peekConn) Peek(b []byte) (int, error) {
	got, err := p.r.Peek(len(b))
	return copy(b, got), err
}

// TestSpliceCopiesEveryPath sends a few MiB each way through Splice for
// each way pump reads a source (TCP from the netpoller, Peek, plain
// Copy), in chunks with pauses between them so buffers are given back and
// taken again, and checks every byte.
func TestSpliceCopiesEveryPath(t *testing.T) {
	tests := []struct {
		name string
		wrap func(*net.TCPConn) net.Conn
	}{
		{"tcp", func(c *net.TCPConn) net.Conn { return c }},
		{"peek", func(c *net.TCPConn) net.Conn { return &peekConn{TCPConn: c, r: bufio.NewReader(c)} }},
		{"plain", func(c *net.TCPConn) net.Conn { return struct{ *net.TCPConn }{c} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			browser, proxyIn := tcpPair(t)
			proxyOut, target := tcpPair(t)
			done := make(chan error, 1)
			go func() { _, err := Splice(t.Context(), tt.wrap(proxyIn), tt.wrap(proxyOut)); done <- err }()
			payload := make([]byte, 3<<20+17)
			for i := range payload {
				payload[i] = byte(i * 7 / 5)
			}
			var wg sync.WaitGroup
			for _, c := range []*net.TCPConn{browser, target} {
				wg.Go(func() {
					for off := 0; off < len(payload); off += 700 << 10 {
						c.Write(payload[off:min(off+700<<10, len(payload))])
						time.Sleep(5 * time.Millisecond)
					}
					c.CloseWrite()
				})
			}
			defer wg.Wait()
			for _, c := range []*net.TCPConn{target, browser} {
				got, err := io.ReadAll(c)
				if err != nil || !bytes.Equal(got, payload) {
					t.Fatalf("got %d bytes (%v), want the %d sent", len(got), err, len(payload))
				}
			}
			if err := <-done; err != nil {
				t.Fatalf("Splice: %v", err)
			}
		})
	}
}

// BenchmarkPump measures the copy sessions use for a TCP source (read
// from the netpoller into pooled buffers); allocs/op stays 0: no
// allocation per chunk.
func BenchmarkPump(b *testing.B) {
	src, dst := tcpPair(b)
	total := int64(b.N) * largeBufferSize
	go func() {
		buf := make([]byte, largeBufferSize)
		for range b.N {
			if _, err := dst.Write(buf); err != nil {
				break
			}
		}
		dst.CloseWrite()
	}()
	b.SetBytes(largeBufferSize)
	b.ReportAllocs()
	b.ResetTimer()
	n, err := pump(io.Discard, src)
	if err != nil || n != total {
		b.Fatalf("pumped %d of %d bytes: %v", n, total, err)
	}
}

func TestBurstBuffer(t *testing.T) {
	const small, medium, large = smallBufferSize, mediumBufferSize, largeBufferSize
	for _, tc := range []struct {
		name  string
		reads []int // bytes each read brings, capped at the buffer's size
		sizes []int // size of the buffer each read gets
	}{
		{"small messages stay small", []int{100, 200, 300}, []int{small, small, small}},
		{"a full small buffer moves up", []int{small, 100}, []int{small, medium}},
		{"a full medium buffer moves up", []int{small, medium, 100}, []int{small, medium, large}},
		{"bulk keeps the size it needs", []int{small, 40 << 10, 50 << 10, medium, 100 << 10, large, 300 << 10, 20 << 10, 100},
			[]int{small, medium, medium, medium, large, large, large, large, medium}},
		{"back to small after a small read", []int{small, 40 << 10, 100, 100}, []int{small, medium, medium, small}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b burstBuffer
			defer b.put()
			for i, n := range tc.reads {
				buf := b.get()
				if len(buf) != tc.sizes[i] {
					t.Fatalf("read %d: buffer of %d bytes, want %d", i, len(buf), tc.sizes[i])
				}
				more := b.filled(min(n, len(buf)))
				if more != (n >= len(buf)) {
					t.Fatalf("read %d: filled(%d) = %v with a %d-byte buffer", i, n, more, len(buf))
				}
			}
		})
	}
}

// TestCopy copies through every buffer size and back down: whole reads,
// short reads, a reader that ends with data, and a failing writer.
func TestCopy(t *testing.T) {
	payload := make([]byte, 3*largeBufferSize+17)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	errWrite := errors.New("write failed")
	for _, tc := range []struct {
		name    string
		src     func() io.Reader
		dst     func(*bytes.Buffer) io.Writer
		wantErr error
	}{
		{"whole reads", func() io.Reader { return bytes.NewReader(payload) }, func(b *bytes.Buffer) io.Writer { return b }, nil},
		{"short reads", func() io.Reader { return iotest.HalfReader(bytes.NewReader(payload)) }, func(b *bytes.Buffer) io.Writer { return b }, nil},
		{"data with EOF", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(payload)) }, func(b *bytes.Buffer) io.Writer { return b }, nil},
		{"writer fails", func() io.Reader { return bytes.NewReader(payload) }, func(*bytes.Buffer) io.Writer { return failWriter{errWrite} }, errWrite},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got bytes.Buffer
			n, err := Copy(tc.dst(&got), tc.src())
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Copy = %d, %v; want %v", n, err, tc.wantErr)
				}
				return
			}
			if err != nil || n != int64(len(payload)) || !bytes.Equal(got.Bytes(), payload) {
				t.Fatalf("Copy = %d, %v; copied %d bytes, want %d intact", n, err, got.Len(), len(payload))
			}
		})
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }
