// Package relay copies bytes both ways between two connections: the splice at
// the heart of every tunnel session (browser ↔ QUIC stream, QUIC stream ↔
// target, public client ↔ QUIC stream).
//
// A relay propagates half-close: when one side finishes sending (EOF), the
// other side's write half is closed (CloseWrite) and the opposite direction
// keeps flowing until it ends too. Any other error tears down both sides at
// once, so a reset on one end never leaves the other hanging.
package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// Copy buffer sizes. A relay starts each burst of bytes with a small
// buffer and moves up one size each time a read fills the one it has, so
// a buffer is held only while bytes flow and is only as large as the
// flow needs. Requests, responses and the TLS records of interactive
// traffic fit in the small one, so 64 busy keep-alive sessions do not
// each pin a large buffer (256 KiB from the first read took up to 15 MiB
// more peak RSS under make bench's small-request load). A bulk transfer
// reaches the large one: fewer reads, writes and hand-offs to quic-go per
// GiB than with 64 KiB (5-10% less CPU per GiB in make bench's bulk phase).
const (
	smallBufferSize  = 8 << 10
	mediumBufferSize = 64 << 10
	largeBufferSize  = 256 << 10
)

var (
	bufferSizes = [...]int{smallBufferSize, mediumBufferSize, largeBufferSize}
	bufPools    [len(bufferSizes)]sync.Pool
)

func init() {
	for i, size := range bufferSizes {
		bufPools[i].New = func() any { b := make([]byte, size); return &b }
	}
}

// burstBuffer hands a copy loop its buffer: the small size first, one
// size up from each read that fills it, given back (put) when a read does
// not fill it. The next burst starts at the size the last read needed, so
// a bulk transfer keeps reading the large size.
type burstBuffer struct {
	bp   *[]byte
	size int // index in bufferSizes of bp, or of the next buffer taken
}

// get returns the buffer to read into, taking one if needed.
func (b *burstBuffer) get() []byte {
	if b.bp == nil {
		b.bp = bufPools[b.size].Get().(*[]byte)
	}
	return *b.bp
}

// filled is told how many bytes the last read put into the buffer. It
// reports whether more is waiting: a read that fills the buffer says so
// (and moves up a size); one that does not gives the buffer back.
func (b *burstBuffer) filled(n int) bool {
	if n < len(*b.bp) {
		b.put()
		b.size = 0
		for b.size+1 < len(bufferSizes) && n >= bufferSizes[b.size] {
			b.size++
		}
		return false
	}
	if b.size+1 < len(bufferSizes) {
		b.put()
		b.size++
	}
	return true
}

// put gives the buffer back, if one is held.
func (b *burstBuffer) put() {
	if b.bp != nil {
		bufPools[b.size].Put(b.bp)
		b.bp = nil
	}
}

// Stats counts the bytes a relay moved in each direction.
type Stats struct {
	AToB int64 // bytes read from a and written to b
	BToA int64 // bytes read from b and written to a
}

// closeWriter is implemented by *net.TCPConn, *tls.Conn and the tunnel's
// stream connections.
type closeWriter interface{ CloseWrite() error }

// closeReader is implemented by *net.TCPConn and stream connections.
type closeReader interface{ CloseRead() error }

// Splice copies a→b and b→a until both directions have ended, then closes
// both connections. It returns the byte counts and, when the relay did not
// end cleanly, the first failure (a reset, a lost connection, a broken
// pipe): the other direction's error is its consequence and is dropped.
// When one direction fails, or ctx is cancelled, both connections are reset
// (see Reset) so neither peer mistakes a cut transfer for a complete one.
func Splice(ctx context.Context, a, b net.Conn) (Stats, error) {
	var (
		st    Stats
		wg    sync.WaitGroup
		once  sync.Once
		cause error // the first failure; the other side's error is its consequence
	)
	abort := sync.OnceFunc(func() { Reset(a); Reset(b) })
	fail := func(err error) {
		once.Do(func() { cause = err })
		abort()
	}
	stop := context.AfterFunc(ctx, abort)

	// One direction in a goroutine, the other in the caller's: a session
	// costs one goroutine stack less.
	wg.Go(func() {
		n, err := copyHalf(b, a)
		st.AToB = n
		if err != nil {
			fail(err)
		}
	})
	n, err := copyHalf(a, b)
	st.BToA = n
	if err != nil {
		fail(err)
	}
	wg.Wait()
	stop()
	a.Close()
	b.Close()
	if ctx.Err() != nil {
		return st, context.Cause(ctx)
	}
	return st, cause
}

// copyHalf copies src to dst; on a clean EOF it half-closes dst for writing
// and src for reading, and returns nil.
func copyHalf(dst, src net.Conn) (int64, error) {
	n, err := pump(dst, src)
	if err != nil {
		return n, err
	}
	if cw, ok := dst.(closeWriter); ok {
		if err := cw.CloseWrite(); err != nil && !IsClosed(err) {
			return n, err
		}
	} else {
		// Without half-close the only way to signal EOF is a full close.
		dst.Close()
	}
	if cr, ok := src.(closeReader); ok {
		cr.CloseRead()
	}
	return n, nil
}

// Copy copies src to dst with pooled buffers, sized as the flow needs
// (burstBuffer). Between two TCP connections it lets the kernel move the
// bytes (splice(2)). It never calls ReadFrom or WriteTo, whose generic
// fallbacks in package net allocate a fresh 32 KiB buffer on every call.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	if spliceable(dst, src) {
		return io.Copy(dst, src)
	}
	var (
		total int64
		buf   burstBuffer
	)
	defer buf.put()
	for {
		n, done, err := copyBurst(dst, src, &buf)
		total += n
		if done {
			return total, err
		}
	}
}

// copyBurst copies what src has ready: it reads while reads fill buf and
// returns after the first that does not, or (done) when either side has
// ended, with a nil error for a clean end of src.
func copyBurst(dst io.Writer, src io.Reader, buf *burstBuffer) (total int64, done bool, err error) {
	for {
		b := buf.get()
		n, rerr := src.Read(b)
		w, werr := write(dst, b[:n])
		total += int64(w)
		if werr != nil || rerr != nil {
			return total, true, endOf(werr, rerr)
		}
		if !buf.filled(n) {
			return total, false, nil
		}
	}
}

// spliceable reports whether dst.ReadFrom(src) runs in the kernel.
func spliceable(dst io.Writer, src io.Reader) bool {
	if _, ok := dst.(*net.TCPConn); !ok {
		return false
	}
	if l, ok := src.(*io.LimitedReader); ok {
		src = l.R
	}
	_, ok := src.(*net.TCPConn)
	return ok
}

// peeker is implemented by QUIC streams: Peek blocks until len(b) bytes
// can be read, without consuming them.
type peeker interface{ Peek(b []byte) (int, error) }

// pump copies src to dst like Copy, but holds a copy buffer only while
// bytes flow: an idle session waits for its next bytes without one (for a
// TCP connection in the netpoller, for a QUIC stream in Peek), so ten
// thousand idle sessions do not pin ten thousand buffers.
func pump(dst io.Writer, src net.Conn) (int64, error) {
	switch s := src.(type) {
	case *net.TCPConn:
		if spliceable(dst, src) {
			return io.Copy(dst, src)
		}
		rc, err := s.SyscallConn()
		if err != nil {
			return Copy(dst, src)
		}
		return pumpTCP(dst, rc)
	case peeker:
		return pumpPeek(dst, src, s)
	}
	return Copy(dst, src)
}

// pumpPeek waits in Peek, then reads what has arrived into a pooled
// buffer and writes it on, keeping a buffer while reads fill it.
func pumpPeek(dst io.Writer, src io.Reader, p peeker) (int64, error) {
	var (
		total int64
		buf   burstBuffer
	)
	defer buf.put()
	one := make([]byte, 1)
	for {
		// Peek's error, if any, is the one Read reports next.
		p.Peek(one)
		n, done, err := copyBurst(dst, src, &buf)
		total += n
		if done {
			return total, err
		}
	}
}

// pumpTCP reads a TCP socket directly from the netpoller: a buffer is
// taken only when the socket is readable, and given back when a read
// does not fill it.
func pumpTCP(dst io.Writer, rc syscall.RawConn) (int64, error) {
	var (
		total int64
		buf   burstBuffer
		b     []byte
		n     int
		rerr  error
	)
	read := func(fd uintptr) bool {
		b = buf.get()
		for {
			n, rerr = syscall.Read(int(fd), b)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			buf.put()
			return false // wait for readability without a buffer
		}
		return true
	}
	defer buf.put()
	for {
		if err := rc.Read(read); err != nil {
			return total, err // closed, or a deadline
		}
		switch {
		case rerr != nil:
			return total, os.NewSyscallError("read", rerr)
		case n == 0:
			return total, nil // EOF
		}
		w, werr := write(dst, b[:n])
		total += int64(w)
		if werr != nil {
			return total, werr
		}
		buf.filled(n)
	}
}

// write writes b whole, as io.Copy does.
func write(dst io.Writer, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	w, err := dst.Write(b)
	if err == nil && w < len(b) {
		err = io.ErrShortWrite
	}
	return w, err
}

// endOf is the outcome of a copy that stopped on werr or rerr: nil for a
// clean end of the source.
func endOf(werr, rerr error) error {
	if werr != nil {
		return werr
	}
	if rerr == io.EOF {
		return nil
	}
	return rerr
}

// resetter is implemented by stream connections that can abort both
// directions so the peer sees an error rather than a clean end of stream.
type resetter interface{ Reset() error }

// Reset tears c down so that its peer learns the relay failed: a QUIC
// stream is reset, a TCP connection is closed with RST; c is closed in any
// case. A clean close would let a truncated transfer pass as complete.
func Reset(c net.Conn) {
	switch c := c.(type) {
	case resetter:
		c.Reset()
	case *net.TCPConn:
		c.SetLinger(0)
	}
	c.Close()
}

// IsClosed reports whether err only says that a connection was closed or
// reset by its peer: the normal end of a relay, not a fault worth reporting.
// (ENOTCONN is what half-closing a socket its peer has reset returns.)
func IsClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ENOTCONN) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}
