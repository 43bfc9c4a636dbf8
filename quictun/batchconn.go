package quictun

import (
	"net"
	"runtime"
	"sync"
	"time"
)

// batchConn is the TLS connection under yamux, whose writer (its send
// loop, the only one) writes each frame on its own: a TLS record and a
// system call per frame. batchConn queues small frames instead and a
// flusher writes what has queued while its previous write was under way,
// so that under load (many streams answering at once) frames share records
// and system calls; an idle connection's frame still goes out at once.
// Frames of batchDirect bytes or more (bulk data) are written by the
// caller itself once the queue has drained: no copy.
type batchConn struct {
	net.Conn
	mu      sync.Mutex
	drained *sync.Cond // signalled when the flusher has written what it took
	buf     []byte     // frames queued
	spare   []byte     // the flusher's previous buffer, for reuse
	busy    bool       // a write to Conn is under way (the flusher's or a direct one)
	err     error      // the first write error: every later Write fails with it
	closed  bool
	kick    chan struct{}
	wg      sync.WaitGroup
}

const (
	batchDirect = 16 << 10  // frames this long are written directly
	batchMax    = 256 << 10 // bytes queued before Write waits
	batchKeep   = 32 << 10  // the largest buffer kept for reuse
	// batchCloseWait bounds how long Close waits for the queue to go out
	// (yamux gives its last frame, a GoAway, 100 ms).
	batchCloseWait = 200 * time.Millisecond
)

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{Conn: c, kick: make(chan struct{}, 1)}
	b.drained = sync.NewCond(&b.mu)
	b.wg.Go(b.flush)
	return b
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.closed && b.err == nil {
		b.err = net.ErrClosed
	}
	if len(p) >= batchDirect {
		for b.err == nil && (b.busy || len(b.buf) > 0) {
			b.drained.Wait()
		}
		if b.err != nil {
			defer b.mu.Unlock()
			return 0, b.err
		}
		b.busy = true
		b.mu.Unlock()
		n, err := b.Conn.Write(p)
		b.mu.Lock()
		b.busy = false
		b.fail(err)
		b.drained.Broadcast()
		b.mu.Unlock()
		return n, err
	}
	for b.err == nil && len(b.buf) > 0 && len(b.buf)+len(p) > batchMax {
		b.drained.Wait()
	}
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	b.buf = append(b.buf, p...)
	if !b.busy {
		b.busy = true
		b.kick <- struct{}{} // never blocks: only who sets busy sends
	}
	return len(p), nil
}

// fail records err, the first write error, and closes the connection so
// that its reader learns of it too. Called with mu held.
func (b *batchConn) fail(err error) {
	if err != nil && b.err == nil {
		b.err = err
		b.Conn.Close()
	}
}

// flush writes what Write queued until Close.
func (b *batchConn) flush() {
	for range b.kick {
		// Let the goroutines that are ready run first: under load some
		// queue more frames, which then share this write.
		runtime.Gosched()
		b.mu.Lock()
		for len(b.buf) > 0 && b.err == nil {
			p := b.buf
			b.buf = b.spare[:0]
			b.drained.Broadcast()
			b.mu.Unlock()
			_, err := b.Conn.Write(p)
			b.mu.Lock()
			b.spare = nil
			if cap(p) <= batchKeep {
				b.spare = p // else a burst's buffer is not kept for the connection's life
			}
			b.fail(err)
		}
		b.buf = b.buf[:0]
		b.busy = false
		b.drained.Broadcast()
		b.mu.Unlock()
	}
}

// Close writes what is queued (for at most batchCloseWait), stops the
// flusher and closes the connection.
func (b *batchConn) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return b.Conn.Close()
	}
	b.closed = true
	if b.busy {
		b.Conn.SetWriteDeadline(time.Now().Add(batchCloseWait))
	}
	for b.busy {
		b.drained.Wait()
	}
	close(b.kick)
	b.mu.Unlock()
	b.wg.Wait()
	return b.Conn.Close()
}
