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

// BufferSize is the size of the pooled copy buffers. 64 KiB lets a single
// read drain several QUIC STREAM frames without a per-chunk allocation.
const BufferSize = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

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
// (see reset) so neither peer mistakes a cut transfer for a complete one.
func Splice(ctx context.Context, a, b net.Conn) (Stats, error) {
	var (
		st    Stats
		wg    sync.WaitGroup
		once  sync.Once
		cause error // the first failure; the other side's error is its consequence
	)
	abort := sync.OnceFunc(func() { reset(a); reset(b) })
	fail := func(err error) {
		once.Do(func() { cause = err })
		abort()
	}
	stop := context.AfterFunc(ctx, abort)

	wg.Add(2)
	go func() {
		defer wg.Done()
		n, err := copyHalf(b, a)
		st.AToB = n
		if err != nil {
			fail(err)
		}
	}()
	go func() {
		defer wg.Done()
		n, err := copyHalf(a, b)
		st.BToA = n
		if err != nil {
			fail(err)
		}
	}()
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
	n, err := Copy(dst, src)
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

// Copy copies src to dst with a pooled buffer, preferring the
// ReaderFrom/WriterTo fast paths (splice(2) between TCP sockets).
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	return io.CopyBuffer(dst, src, *bp)
}

// resetter is implemented by stream connections that can abort both
// directions so the peer sees an error rather than a clean end of stream.
type resetter interface{ Reset() error }

// reset tears c down so that its peer learns the relay failed: a QUIC
// stream is reset, a TCP connection is closed with RST. A clean close would
// let a truncated transfer pass as complete.
func reset(c net.Conn) {
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
func IsClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}
