package service

import (
	"io"
	"sync"
	"time"
)

// batchInterval is the least time between two writes of a batchWriter:
// under load, the lines of a millisecond share one write(2). A line that
// comes after a quiet spell goes out at once.
const batchInterval = time.Millisecond

// maxBatch bounds the bytes a batchWriter holds: a writer that finds it
// full waits for the flusher, so lines are delayed under pressure, never
// dropped.
const maxBatch = 256 << 10

// batchWriter passes writes on to an io.Writer from one goroutine of its
// own, at most one write per batchInterval: a busy proxy logging every
// request pays one write(2) per batch of lines instead of one per line
// (make bench: the access log was 15% of coordinator's CPU under 64
// keep-alive clients, a third of it in write(2)). A line after a quiet
// spell goes out at once, so a quiet service logs exactly as before.
//
// Close flushes what is left and stops the flusher; lines written in the
// last moment before a crash may be lost.
type batchWriter struct {
	w    io.Writer
	mu   sync.Mutex
	cond *sync.Cond // signalled when buf gains bytes, empties, or closes
	buf  []byte
	// busy is true while the flusher writes a batch outside the lock.
	busy   bool
	closed bool
	done   chan struct{}
}

func newBatchWriter(w io.Writer) *batchWriter {
	b := &batchWriter{w: w, done: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.flush()
	return b
}

// Write queues p (slog handlers write one whole record per call). After
// Close it writes p straight through.
func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	for len(b.buf) > 0 && len(b.buf)+len(p) > maxBatch && !b.closed {
		b.cond.Wait()
	}
	if b.closed {
		for len(b.buf) > 0 || b.busy {
			b.cond.Wait() // the last batch goes first
		}
		defer b.mu.Unlock()
		return b.w.Write(p)
	}
	b.buf = append(b.buf, p...)
	b.cond.Broadcast()
	b.mu.Unlock()
	return len(p), nil
}

// flush writes out batches until Close.
func (b *batchWriter) flush() {
	defer close(b.done)
	var (
		out  []byte
		last time.Time // of the last write
	)
	b.mu.Lock()
	for {
		for len(b.buf) == 0 && !b.closed {
			b.cond.Wait()
		}
		if len(b.buf) == 0 {
			b.mu.Unlock()
			return // closed and drained
		}
		if wait := batchInterval - time.Since(last); wait > 0 && !b.closed {
			b.mu.Unlock()
			time.Sleep(wait) // busy: let more lines join this batch
			b.mu.Lock()
		}
		out, b.buf = b.buf, out[:0]
		b.busy = true
		b.cond.Broadcast() // room for waiting writers
		b.mu.Unlock()
		b.w.Write(out) // a log has nowhere to report its own write errors
		last = time.Now()
		b.mu.Lock()
		b.busy = false
		b.cond.Broadcast()
	}
}

// Close flushes what is queued and stops the flusher. Later writes go
// straight through. It does not close the underlying writer.
func (b *batchWriter) Close() error {
	b.mu.Lock()
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()
	<-b.done
	return nil
}
