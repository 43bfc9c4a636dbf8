package httpproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"quictunnel/internal/relay"
)

// maxChunkLine bounds a chunk-size line (size, extensions) and each
// trailer line.
const maxChunkLine = 4096

// copyFixed copies exactly n bytes from src to dst, writing straight to
// dst so a streamed body is never held back in a buffer.
func copyFixed(dst io.Writer, src *bufio.Reader, n int64) (int64, error) {
	w, err := relay.Copy(dst, io.LimitReader(src, n))
	if err == nil && w < n {
		err = fmt.Errorf("body ended after %d of %d bytes: %w", w, n, io.ErrUnexpectedEOF)
	}
	return w, err
}

// copyChunked relays a chunked body from src to bw in its original
// framing, trailers included, and returns the number of payload bytes. It
// flushes whenever src has nothing buffered, so streamed events (SSE, long
// polls) reach the other side as they come.
func copyChunked(bw *bufio.Writer, src *bufio.Reader) (int64, error) {
	var total int64
	for {
		line, err := readLine(src, maxChunkLine)
		if err != nil {
			return total, fmt.Errorf("chunk size: %w", err)
		}
		size, err := parseChunkSize(line)
		if err != nil {
			return total, err
		}
		bw.WriteString(line)
		bw.WriteString("\r\n")
		if size == 0 {
			return total, copyTrailers(bw, src)
		}
		n, err := io.CopyN(bw, src, size)
		total += n
		if err != nil {
			return total, fmt.Errorf("chunk data: %w", err)
		}
		if crlf, err := readLine(src, 0); err != nil || crlf != "" {
			return total, fmt.Errorf("%w: chunk not followed by CRLF", errMalformed)
		}
		bw.WriteString("\r\n")
		if src.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return total, err
			}
		}
	}
}

// copyTrailers relays the trailer section and the final CRLF.
func copyTrailers(bw *bufio.Writer, src *bufio.Reader) error {
	for total := 0; ; {
		line, err := readLine(src, maxChunkLine)
		if err != nil {
			return fmt.Errorf("trailer: %w", err)
		}
		total += len(line)
		if total > maxChunkLine*4 {
			return fmt.Errorf("%w: trailers too large", errMalformed)
		}
		bw.WriteString(line)
		bw.WriteString("\r\n")
		if line == "" {
			return bw.Flush()
		}
	}
}

// parseChunkSize parses "1a;ext=1" as 0x1a.
func parseChunkSize(line string) (int64, error) {
	size, _, _ := strings.Cut(line, ";")
	size = strings.TrimRight(size, " \t")
	n, err := strconv.ParseInt(size, 16, 64)
	if err != nil || n < 0 || size == "" || size[0] == '+' || size[0] == '-' {
		return 0, fmt.Errorf("%w: bad chunk size %q", errMalformed, truncate(line))
	}
	return n, nil
}

// copyBody relays a body of the given kind from src to dst (whose
// buffered writer is bw, already flushed).
func copyBody(kind bodyKind, length int64, dst net.Conn, bw *bufio.Writer, src *bufio.Reader) (int64, error) {
	switch kind {
	case bodyLength:
		return copyFixed(dst, src, length)
	case bodyChunked:
		return copyChunked(bw, src)
	case bodyUntilClose:
		n, err := relay.Copy(dst, src)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return n, err
	}
	return 0, nil
}

// requestBody is a request body being relayed to the upstream, on a
// goroutine of its own, while the exchange waits for the response.
type requestBody struct {
	done   chan struct{} // closed when the relay has ended
	failed chan struct{} // closed when the client failed, before the upstream is reset
	n      int64         // set before done is closed
	err    error         // set before failed and done are closed
}

// relayBody starts relaying h's body from the client to u. Reads from the
// client wait at most BodyReadTimeout each. When the client fails (it
// stops sending, closes early, sends a malformed chunk), the upstream is
// reset: the exchange waiting for its response wakes, and every hop behind
// it lets go of the request.
func (c *conn) relayBody(h *head, u *upstream) *requestBody {
	b := &requestBody{done: make(chan struct{}), failed: make(chan struct{})}
	c.rd.timeout, c.rd.err = c.e.cfg.BodyReadTimeout, nil
	go func() {
		defer close(b.done)
		if h.chunked {
			b.n, b.err = copyChunked(u.bw, c.br)
		} else {
			b.n, b.err = copyFixed(u.c, c.br, h.contentLength)
		}
		clientErr := c.rd.err
		c.rd.timeout, c.rd.err = 0, nil
		switch {
		case b.err == nil:
			c.c.SetReadDeadline(time.Time{})
		case clientErr != nil || errors.Is(b.err, errMalformed):
			close(b.failed)
			u.abort()
		}
		// Otherwise the upstream failed: the exchange learns it from the
		// upstream itself, after any response it sent.
	}()
	return b
}

// clientFailed reports whether the client failed its body: the upstream
// has been (or is being) reset. b may be nil: no body.
func (b *requestBody) clientFailed() bool {
	if b == nil {
		return false
	}
	select {
	case <-b.failed:
		return true
	default:
		return false
	}
}

// wait waits up to grace for the relay to end and reports whether it did.
// A relay the client failed is ending (it has reset the upstream): wait
// waits for it whatever grace.
func (b *requestBody) wait(grace time.Duration) bool {
	if b.clientFailed() {
		<-b.done
		return true
	}
	select {
	case <-b.done:
		return true
	default:
	}
	if grace <= 0 {
		return false
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-b.done:
		return true
	case <-t.C:
		return false
	}
}

// answerBodyFailure answers a request whose client failed its body, if the
// client can still read the answer (408 for a body that stopped arriving,
// 400 for one cut short or malformed), and returns the error to log.
func (c *conn) answerBodyFailure(b *requestBody) error {
	status, err := http.StatusBadRequest, fmt.Errorf("request body: %w", b.err)
	if errors.Is(b.err, os.ErrDeadlineExceeded) {
		status = http.StatusRequestTimeout
		err = fmt.Errorf("request body stopped arriving (nothing for %s after %d bytes): %w", c.e.cfg.BodyReadTimeout, b.n, b.err)
	}
	c.c.SetWriteDeadline(time.Now().Add(requestBodyGrace)) // the client may not read
	c.writeError(status, err.Error())
	return err
}
