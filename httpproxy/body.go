package httpproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

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
