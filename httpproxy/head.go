package httpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// field is one header line as received: the raw line (without CRLF), so it
// is forwarded byte for byte, and its name and value for interpretation.
type field struct {
	raw   string
	name  string // as received, case preserved
	value string // without surrounding whitespace
}

// head is the start line and header fields of a request or a response.
type head struct {
	// Request line: method, target, version; or status line: version,
	// status code, reason.
	method, target string
	status         int
	reason         string
	major, minor   int
	fields         []field

	// Framing and connection semantics, derived from fields.
	contentLength int64 // -1 when absent
	chunked       bool
	close         bool // the sender will close after this message
	upgrade       bool // Connection: upgrade with an Upgrade field
	expect100     bool
	connTokens    []string // lower-case names listed in Connection: hop-by-hop too
}

// hopByHop are the fields that concern one connection only (RFC 9110
// §7.6.1), never forwarded unless kept on purpose.
var hopByHop = []string{"connection", "proxy-connection", "keep-alive", "proxy-authorization",
	"proxy-authenticate", "upgrade", "te"}

// containsFold reports whether names holds name, ignoring case.
func containsFold(names []string, name string) bool {
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// count returns the number of fields named name (case-insensitive).
func (h *head) count(name string) int {
	n := 0
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			n++
		}
	}
	return n
}

// get returns the value of the first field named name (case-insensitive).
func (h *head) get(name string) (string, bool) {
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) {
			return f.value, true
		}
	}
	return "", false
}

// errHeadTooLarge is returned when a head exceeds the size limit.
var errHeadTooLarge = errors.New("header block too large")

// readLines reads the lines of a head up to and including the empty line,
// at most limit bytes in all. Leading empty lines are skipped (RFC 9112
// §2.2). Lines may end in CRLF or a bare LF.
func readLines(br *bufio.Reader, limit int) ([]string, error) {
	start, n, err := readStartLine(br, limit)
	if err != nil {
		return nil, err
	}
	return readFieldLines(br, []string{start}, limit-n)
}

// readStartLine reads the first line of a head, skipping empty lines
// before it, and returns it with the bytes it took.
func readStartLine(br *bufio.Reader, limit int) (string, int, error) {
	total := 0
	for {
		line, err := readLine(br, limit-total)
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return "", 0, errHeadTooLarge
			}
			return "", 0, err
		}
		total += len(line) + 2
		if total > limit {
			return "", 0, errHeadTooLarge
		}
		if line != "" {
			return line, total, nil
		}
	}
}

// readFieldLines appends the field lines of a head to lines, up to the
// empty line that ends it, at most limit bytes.
func readFieldLines(br *bufio.Reader, lines []string, limit int) ([]string, error) {
	total := 0
	for {
		line, err := readLine(br, limit-total)
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return nil, errHeadTooLarge
			}
			return nil, err
		}
		total += len(line) + 2
		if total > limit {
			return nil, errHeadTooLarge
		}
		if line == "" {
			return lines, nil
		}
		lines = append(lines, line)
	}
}

// readLine reads one line of at most limit bytes, without its terminator.
func readLine(br *bufio.Reader, limit int) (string, error) {
	var buf []byte // only for a line longer than br's buffer
	for {
		chunk, err := br.ReadSlice('\n')
		if len(buf)+len(chunk) > limit+2 {
			return "", errHeadTooLarge
		}
		if err == nil {
			if buf == nil {
				return lineString(chunk) // the usual case: no copy but the string
			}
			return lineString(append(buf, chunk...))
		}
		buf = append(buf, chunk...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			if len(buf) > 0 && errors.Is(err, io.EOF) {
				return "", fmt.Errorf("%w: head ends mid-line", errMalformed)
			}
			return "", err
		}
	}
}

// lineString returns line (ending in LF) without its CRLF or LF, refusing
// a stray CR or NUL inside it.
func lineString(line []byte) (string, error) {
	line = bytes.TrimSuffix(line[:len(line)-1], []byte{'\r'})
	if bytes.IndexByte(line, '\r') >= 0 || bytes.IndexByte(line, 0) >= 0 {
		return "", fmt.Errorf("%w: stray CR or NUL in a header line", errMalformed)
	}
	return string(line), nil
}

// errMalformed marks a message that breaks HTTP/1.1 syntax: 400.
var errMalformed = errors.New("malformed HTTP message")

// parseRequestHead reads a request head. A request line that cannot be
// one is refused as soon as it is read (an HTTP/0.9 client sends nothing
// more and waits), or as soon as its first bytes show it (TLS, or
// another protocol, on a plain HTTP port).
func parseRequestHead(br *bufio.Reader, limit int) (*head, error) {
	if err := checkRequestStart(br); err != nil {
		return nil, err
	}
	line, n, err := readStartLine(br, limit)
	if err != nil {
		return nil, err
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, version, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !isToken(method) || target == "" || strings.ContainsAny(target, " \t") {
		return nil, fmt.Errorf("%w: bad request line %q", errMalformed, truncate(line))
	}
	h := &head{method: method, target: target}
	if h.major, h.minor, ok1 = parseVersion(version); !ok1 {
		return nil, fmt.Errorf("%w: bad HTTP version %q", errMalformed, truncate(version))
	}
	lines, err := readFieldLines(br, nil, limit-n)
	if err != nil {
		return nil, err
	}
	if err := h.parseFields(lines); err != nil {
		return nil, err
	}
	if hosts := h.count("Host"); hosts > 1 {
		return nil, fmt.Errorf("%w: %d Host fields", errMalformed, hosts) // RFC 9112 §3.2
	}
	return h, h.requestFraming()
}

// checkRequestStart waits for the first bytes of a request and refuses
// them when they cannot start a request line: a method is a token,
// preceded by nothing but empty lines.
func checkRequestStart(br *bufio.Reader) error {
	if _, err := br.Peek(1); err != nil {
		return err
	}
	b, _ := br.Peek(br.Buffered())
	b = bytes.TrimLeft(b, "\r\n")
	for _, c := range b {
		if c == ' ' {
			return nil
		}
		if !isTokenChar(c) {
			return fmt.Errorf("%w: bad request line starting %q", errMalformed, truncate(string(b[:min(len(b), 16)])))
		}
	}
	return nil
}

// parseResponseHead reads a response head.
func parseResponseHead(br *bufio.Reader, limit int) (*head, error) {
	lines, err := readLines(br, limit)
	if err != nil {
		return nil, err
	}
	version, rest, _ := strings.Cut(lines[0], " ")
	code, reason, _ := strings.Cut(rest, " ")
	h := &head{reason: reason}
	var ok bool
	if h.major, h.minor, ok = parseVersion(version); !ok {
		return nil, fmt.Errorf("%w: bad status line %q", errMalformed, truncate(lines[0]))
	}
	if len(code) != 3 {
		return nil, fmt.Errorf("%w: bad status code %q", errMalformed, truncate(code))
	}
	if h.status, err = strconv.Atoi(code); err != nil || h.status < 100 {
		return nil, fmt.Errorf("%w: bad status code %q", errMalformed, truncate(code))
	}
	if err := h.parseFields(lines[1:]); err != nil {
		return nil, err
	}
	return h, h.responseFraming()
}

func parseVersion(v string) (major, minor int, ok bool) {
	if len(v) != 8 || !strings.HasPrefix(v, "HTTP/") || v[6] != '.' || v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9' {
		return 0, 0, false
	}
	major, minor = int(v[5]-'0'), int(v[7]-'0')
	return major, minor, major == 1
}

// parseFields splits header lines and derives the connection semantics.
func (h *head) parseFields(lines []string) error {
	h.fields = make([]field, 0, len(lines))
	h.contentLength = -1
	var upgradeToken, keepAlive bool
	for _, line := range lines {
		if line[0] == ' ' || line[0] == '\t' {
			return fmt.Errorf("%w: obsolete line folding", errMalformed)
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			return fmt.Errorf("%w: bad header line %q", errMalformed, truncate(line))
		}
		value = strings.Trim(value, " \t")
		h.fields = append(h.fields, field{raw: line, name: name, value: value})
		switch {
		case strings.EqualFold(name, "connection"):
			for _, tok := range strings.Split(value, ",") {
				tok = strings.ToLower(strings.TrimSpace(tok))
				switch tok {
				case "":
					continue
				case "close":
					h.close = true
				case "keep-alive":
					keepAlive = true
				case "upgrade":
					upgradeToken = true
				}
				h.connTokens = append(h.connTokens, tok)
			}
		case strings.EqualFold(name, "expect"):
			h.expect100 = strings.EqualFold(value, "100-continue")
		}
	}
	if _, ok := h.get("Upgrade"); ok && upgradeToken {
		h.upgrade = true
	}
	if h.minor == 0 && !keepAlive {
		h.close = true // HTTP/1.0 closes unless asked not to
	}
	return nil
}

// bodyFraming reads Transfer-Encoding and Content-Length (RFC 9112 §6),
// refusing the ambiguous combinations request smuggling relies on.
func (h *head) bodyFraming() error {
	var te []string
	var cl string
	for _, f := range h.fields {
		switch strings.ToLower(f.name) {
		case "transfer-encoding":
			for _, c := range strings.Split(f.value, ",") {
				if c = strings.ToLower(strings.TrimSpace(c)); c != "" {
					te = append(te, c)
				}
			}
		case "content-length":
			if cl != "" && cl != f.value {
				return fmt.Errorf("%w: conflicting Content-Length fields", errMalformed)
			}
			cl = f.value
		}
	}
	if len(te) > 0 {
		if cl != "" {
			return fmt.Errorf("%w: both Transfer-Encoding and Content-Length", errMalformed)
		}
		if h.minor == 0 {
			return fmt.Errorf("%w: Transfer-Encoding in an HTTP/1.0 message", errMalformed)
		}
		if te[len(te)-1] != "chunked" {
			return errNotChunked
		}
		for _, c := range te[:len(te)-1] {
			if c == "chunked" {
				return fmt.Errorf("%w: Transfer-Encoding applies chunked twice", errMalformed)
			}
		}
		h.chunked = true
		return nil
	}
	if cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 || cl[0] == '+' {
			return fmt.Errorf("%w: bad Content-Length %q", errMalformed, truncate(cl))
		}
		h.contentLength = n
	}
	return nil
}

// errNotChunked: a Transfer-Encoding whose last coding is not chunked.
var errNotChunked = errors.New("transfer coding is not chunked")

func (h *head) requestFraming() error {
	err := h.bodyFraming()
	if errors.Is(err, errNotChunked) {
		// RFC 9112 §6.3: the length of such a request cannot be known.
		return fmt.Errorf("%w: request Transfer-Encoding does not end in chunked", errMalformed)
	}
	if err != nil {
		return err
	}
	// A coding before chunked (gzip, chunked) is one the app may not know
	// (RFC 9112 §6.1); an empty field is one each reader may take its own
	// way. Refused here rather than relayed.
	for _, f := range h.fields {
		if strings.EqualFold(f.name, "Transfer-Encoding") && !strings.EqualFold(f.value, "chunked") {
			return fmt.Errorf("%w: Transfer-Encoding %q: only chunked is accepted", errMalformed, truncate(f.value))
		}
	}
	return nil
}

func (h *head) responseFraming() error {
	err := h.bodyFraming()
	if errors.Is(err, errNotChunked) {
		h.close = true // close-delimited (RFC 9112 §6.3 rule 4)
		return nil
	}
	return err
}

// hasBody reports whether a request carries a body.
func (h *head) requestHasBody() bool { return h.chunked || h.contentLength > 0 }

// responseBody says how the body of a response to method is delimited.
type bodyKind int

const (
	bodyNone   bodyKind = iota
	bodyLength          // Content-Length bytes
	bodyChunked
	bodyUntilClose
)

func (h *head) responseBody(method string) bodyKind {
	switch {
	case method == "HEAD" || h.status/100 == 1 || h.status == 204 || h.status == 304:
		return bodyNone
	case method == "CONNECT" && h.status/100 == 2:
		return bodyNone
	case h.chunked:
		return bodyChunked
	case h.contentLength >= 0:
		if h.contentLength == 0 {
			return bodyNone
		}
		return bodyLength
	}
	return bodyUntilClose
}

// appendFields appends the fields to b, leaving out hop-by-hop ones and
// those named in drop; keep names hop-by-hop fields that must stay
// (Upgrade on an upgrade). Names match whatever their case.
func (h *head) appendFields(b []byte, keep, drop []string) []byte {
	for _, f := range h.fields {
		hop := containsFold(hopByHop, f.name) || containsFold(h.connTokens, f.name)
		if (hop && !containsFold(keep, f.name)) || containsFold(drop, f.name) {
			continue
		}
		b = append(b, f.raw...)
		b = append(b, "\r\n"...)
	}
	return b
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

// isTokenChar reports whether c is a tchar (RFC 9110 §5.6.2).
func isTokenChar(c byte) bool {
	return c > ' ' && c < 0x7f && strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) < 0
}

// truncate shortens s for error messages.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
