package inspector

import (
	"bufio"
	"errors"
	"io"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// The capture's HTTP/1.1 reader: what a record needs (the first line, the
// header fields, where the body ends) without net/http's header maps, URL
// parsing and per-message allocations, which cost a Host-routed small
// request more than the relay itself. A message it does not understand
// ends the capture of that connection; its bytes still flow.

// errMalformed is a message the capture does not follow.
var errMalformed = errors.New("inspector: malformed HTTP/1.1 message")

// maxHead bounds a message head's bytes, as net/http's default
// MaxHeaderBytes.
const maxHead = 1 << 20

// head is a message head: a request's method, target and version, or a
// response's version, status code and reason; and its fields in the order
// sent, with canonical names.
type head struct {
	first  [3]string
	fields [][2]string
}

// readHead reads a message head; request says which kind.
func readHead(br *bufio.Reader, request bool) (head, error) {
	var h head
	line, err := readLine(br)
	if err != nil {
		return h, err
	}
	size := len(line)
	a, rest, ok := strings.Cut(line, " ")
	b, c, ok2 := strings.Cut(rest, " ")
	switch {
	case !ok, request && !ok2, request && !strings.HasPrefix(c, "HTTP/1."), !request && !strings.HasPrefix(a, "HTTP/1."),
		request && (a == "" || b == ""), !request && (len(b) != 3 || b[0] < '1' || b[0] > '5'):
		return h, errMalformed
	}
	h.first = [3]string{a, b, c}
	for {
		line, err := readLine(br)
		if err != nil {
			return h, err
		}
		if line == "" {
			return h, nil
		}
		if size += len(line); size > maxHead {
			return h, errMalformed
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return h, errMalformed // obsolete line folding too
		}
		h.fields = append(h.fields, [2]string{textproto.CanonicalMIMEHeaderKey(name), strings.Trim(value, " \t")})
	}
}

// readLine reads a line without its CRLF (or LF). A line longer than br's
// buffer is put together (up to maxHead), so the buffer stays small.
func readLine(br *bufio.Reader) (string, error) {
	b, err := br.ReadSlice('\n')
	var long []byte
	for errors.Is(err, bufio.ErrBufferFull) {
		if long = append(long, b...); len(long) > maxHead {
			return "", errMalformed
		}
		b, err = br.ReadSlice('\n')
	}
	if long != nil {
		b = append(long, b...)
	}
	switch {
	case err == io.EOF && len(b) > 0:
		return "", io.ErrUnexpectedEOF
	case err != nil:
		return "", err
	}
	b = b[:len(b)-1]
	if len(b) > 0 && b[len(b)-1] == '\r' {
		b = b[:len(b)-1]
	}
	return string(b), nil
}

// get returns the values of field name (canonical) joined by ", ", and
// whether there is one.
func (h *head) get(name string) (string, bool) {
	var v string
	found := false
	for _, f := range h.fields {
		if f[0] == name {
			if found {
				v += ", " + f[1]
			} else {
				v = f[1]
			}
			found = true
		}
	}
	return v, found
}

// host is a request's host: its target's if in absolute form, else its
// Host field's.
func (h *head) host() string {
	// As net/http reads it: a CONNECT's target is an authority; any
	// other target not starting with "/" is an absolute URI, of any scheme.
	if t := h.first[1]; !strings.HasPrefix(t, "/") {
		if h.first[0] == "CONNECT" {
			t = "http://" + t
		}
		if u, err := url.ParseRequestURI(t); err == nil && u.Host != "" {
			return u.Host
		}
	}
	for _, f := range h.fields {
		if f[0] == "Host" {
			return f[1]
		}
	}
	return ""
}

// list returns first, then the fields other than Host sorted by name (each
// name's values in the order sent), as the page shows them.
func (h *head) list(first ...[2]string) [][2]string {
	if len(h.fields)+len(first) == 0 {
		return nil
	}
	out := append(make([][2]string, 0, len(first)+len(h.fields)), first...)
	for _, f := range h.fields {
		if f[0] != "Host" || len(first) == 0 {
			out = append(out, f)
		}
	}
	slices.SortStableFunc(out[len(first):], func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

// bodySize says where the body of a message with head h ends: after size
// bytes, after its last chunk (chunked), or at the connection's end (size
// -1, responses only). noBody is a response to HEAD, or a 1xx, 204 or 304.
func (h *head) bodySize(request, noBody bool) (size int64, chunked bool, err error) {
	if noBody {
		return 0, false, nil
	}
	if te, ok := h.get("Transfer-Encoding"); ok {
		codings := strings.Split(te, ",")
		if strings.EqualFold(strings.TrimSpace(codings[len(codings)-1]), "chunked") {
			return 0, true, nil
		}
		if request {
			return 0, false, errMalformed
		}
		return -1, false, nil
	}
	cl, ok := h.get("Content-Length")
	if !ok {
		if request {
			return 0, false, nil
		}
		return -1, false, nil
	}
	first, rest, _ := strings.Cut(cl, ", ")
	for rest != "" { // repeated fields must agree
		var v string
		v, rest, _ = strings.Cut(rest, ", ")
		if v != first {
			return 0, false, errMalformed
		}
	}
	n, err := strconv.ParseUint(first, 10, 63)
	if err != nil || first == "" || first[0] == '+' {
		return 0, false, errMalformed
	}
	return int64(n), false, nil
}

// readBody reads a body that ends as bodySize said from br, which reads f,
// keeping at most limit bytes. The rest of a body of known length is
// skipped rather than read: the bytes still in br are discarded and f is
// told to drop the others, which then are never copied; readBody returns
// once they have gone by.
func readBody(br *bufio.Reader, f *feed, size int64, chunked bool, limit int) (kept []byte, cut bool, n int64, err error) {
	switch {
	case chunked:
		kept, cut, n, err = readCapped(httputil.NewChunkedReader(br), limit)
		for err == nil { // the trailer section
			var line string
			if line, err = readLine(br); line == "" {
				break
			}
		}
		return kept, cut, n, err
	case size < 0:
		return readCapped(br, limit)
	case size == 0:
		return nil, false, 0, nil
	}
	kept = make([]byte, min(size, int64(limit)))
	if m, err := io.ReadFull(br, kept); err != nil {
		return kept[:m], false, int64(m), err
	}
	if rest := size - int64(len(kept)); rest > 0 {
		d, _ := br.Discard(int(min(rest, int64(br.Buffered()))))
		if missing := f.skip(rest - int64(d)); missing > 0 {
			return kept, true, size - missing, io.ErrUnexpectedEOF
		}
	}
	return kept, size > int64(limit), size, nil
}
