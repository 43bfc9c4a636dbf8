package inspector

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
)

// message is what a record takes from a request or a response.
type message struct {
	first, host string
	fields      [][2]string
	body        string
}

// ours reads the messages of data with the capture's reader, up to the
// first it does not follow; methods are the requests' (nil: data holds
// requests).
func ours(data []byte, methods []string) []message {
	br := bufio.NewReaderSize(bytes.NewReader(data), 16)
	f := newFeed(new(atomic.Int64))
	f.end() // bytes come from data, not f
	var out []message
	for i := 0; methods == nil || i < len(methods); i++ {
		var h head
		var err error
		status := 0
		for {
			if h, err = readHead(br, methods == nil); err != nil || methods == nil {
				break
			}
			status, _ = strconv.Atoi(h.first[1])
			if status >= 200 || status == 101 {
				break
			}
		}
		if err != nil {
			return out
		}
		noBody := methods != nil && (methods[i] == "HEAD" || status == 101 || status == 204 || status == 304)
		size, chunked, err := h.bodySize(methods == nil, noBody)
		if err != nil {
			return out
		}
		body, _, _, err := readBody(br, f, size, chunked, len(data))
		if err != nil {
			return out
		}
		m := message{first: h.first[0] + " " + h.first[1], body: string(body)}
		if methods == nil {
			m.host = h.host()
			m.fields = h.list([2]string{"Host", m.host})
		} else {
			m.first = h.first[1]
			m.fields = h.list()
		}
		out = append(out, m)
		if status == 101 {
			return out
		}
	}
	return out
}

// theirs is ours with net/http's reader.
func theirs(data []byte, methods []string) []message {
	br := bufio.NewReader(bytes.NewReader(data))
	var out []message
	for i := 0; methods == nil || i < len(methods); i++ {
		var m message
		var body io.Reader
		if methods == nil {
			req, err := http.ReadRequest(br)
			if err != nil {
				return out
			}
			m = message{first: req.Method + " " + req.RequestURI, host: req.Host, fields: headerList(req.Header, [2]string{"Host", req.Host})}
			body = req.Body
		} else {
			var resp *http.Response
			var err error
			for {
				resp, err = http.ReadResponse(br, &http.Request{Method: methods[i]})
				if err != nil || resp.StatusCode >= 200 || resp.StatusCode == 101 {
					break
				}
			}
			if err != nil {
				return out
			}
			m = message{first: strconv.Itoa(resp.StatusCode), fields: headerList(resp.Header)}
			body = resp.Body
		}
		b, err := io.ReadAll(body)
		if err != nil {
			return out
		}
		m.body = string(b)
		out = append(out, m)
		if m.first == "101" {
			return out
		}
	}
	return out
}

// sameFields compares field lists but for those net/http moves out of
// the header (framing, trailers) or adds (Cache-Control for Pragma).
func sameFields(a, b [][2]string) bool {
	keep := func(l [][2]string) [][2]string {
		return slices.DeleteFunc(slices.Clone(l), func(f [2]string) bool {
			switch f[0] {
			case "Transfer-Encoding", "Trailer", "Content-Length", "Cache-Control":
				return true
			}
			return false
		})
	}
	return slices.Equal(keep(a), keep(b))
}

// FuzzHead: where net/http and the capture's reader both read a message,
// they read the same one (first line, Host, fields, body), and so the same
// framing for those after it.
func FuzzHead(f *testing.F) {
	f.Add([]byte("GET /a?x=1 HTTP/1.1\r\nHost: a\r\nX-Y: 1\r\nx-y: 2\r\n\r\nPOST http://b.example/c HTTP/1.1\r\nHost: c\r\nContent-Length: 3\r\n\r\nabc"),
		[]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n"), "GET")
	f.Add([]byte("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: v\r\n\r\nHEAD / HTTP/1.0\r\n\r\n"),
		[]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"), "HEAD")
	f.Add([]byte("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"), []byte("HTTP/1.0 200 OK\r\n\r\nto the end"), "POST")
	f.Fuzz(func(t *testing.T, reqs, resps []byte, method string) {
		a, b := ours(reqs, nil), theirs(reqs, nil)
		for i := range min(len(a), len(b)) {
			if a[i].first != b[i].first || a[i].host != b[i].host || a[i].body != b[i].body || !sameFields(a[i].fields, b[i].fields) {
				t.Fatalf("request %d: capture read %+v, net/http %+v", i, a[i], b[i])
			}
		}
		methods := []string{"GET", method, "GET"}
		a, b = ours(resps, methods), theirs(resps, methods)
		for i := range min(len(a), len(b)) {
			if a[i].first != b[i].first || a[i].body != b[i].body || !sameFields(a[i].fields, b[i].fields) {
				t.Fatalf("response %d: capture read %+v, net/http %+v", i, a[i], b[i])
			}
		}
	})
}
