package demoapp

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// sniffAll feeds stream to a new sniffer in pieces of at most step bytes
// (all at once when step is 0).
func sniffAll(stream []byte, step int) *sniffer {
	var s sniffer
	if step <= 0 {
		step = len(stream) + 1
	}
	for p := stream; len(p) > 0; {
		n := min(step, len(p))
		s.feed(p[:n])
		p = p[n:]
	}
	return &s
}

func TestSnifferFraming(t *testing.T) {
	tests := []struct {
		name      string
		stream    string
		want      []string // "METHOD TARGET name=value name=value"
		wantState sniffState
		upgraded  bool
	}{
		{"one request", "GET /a HTTP/1.1\r\nHost: x\r\nx-Lower: 1\r\nX-UPPER: 2\r\nx-lower: 3\r\n\r\n",
			[]string{"GET /a Host=x x-Lower=1 X-UPPER=2 x-lower=3"}, stHead, false},
		{"content-length body then next", "POST /p HTTP/1.1\r\nContent-Length: 20\r\n\r\nGET /x HTTP/1.1\r\n\r\n.GET /b HTTP/1.1\nA:  b \n\n",
			[]string{"POST /p Content-Length=20", "GET /b A=b"}, stHead, false},
		{"chunked with extension and trailer", "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"5;ext=1\r\nGET /\r\n10 \r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\nGET /n HTTP/1.1\r\n\r\n",
			[]string{"POST /c Transfer-Encoding=chunked", "GET /n"}, stHead, false},
		{"blank lines before a request", "\r\n\r\nGET / HTTP/1.1\r\n\r\n", []string{"GET /"}, stHead, false},
		{"folded header", "GET / HTTP/1.1\r\nA: 1\r\n  2\r\n\r\n", []string{"GET / A=1 2"}, stHead, false},
		{"http/1.0 ignores transfer-encoding", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabcGET /z HTTP/1.0\r\n\r\n",
			[]string{"POST / Transfer-Encoding=chunked Content-Length=3", "GET /z"}, stHead, false},
		{"partial head", "GET / HTTP/1.1\r\nHost: x\r\n", nil, stHead, false},
		{"inside a body", "PUT / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc", []string{"PUT / Content-Length=100"}, stBody, false},
		{"websocket upgrade stops", "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x85GET / HTTP/1.1\r\n\r\n",
			[]string{"GET /ws Upgrade=websocket Connection=Upgrade"}, stStopped, true},
		{"CONNECT stops", "CONNECT h:443 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", []string{"CONNECT h:443"}, stStopped, true},
		{"gzip transfer-encoding stops", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", nil, stStopped, false},
		{"conflicting lengths stop", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", nil, stStopped, false},
		{"signed length stops", "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", nil, stStopped, false},
		{"bad chunk size stops", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", []string{"POST / Transfer-Encoding=chunked"}, stStopped, false},
		{"missing chunk end stops", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", []string{"POST / Transfer-Encoding=chunked"}, stStopped, false},
		{"header without colon stops", "GET / HTTP/1.1\r\nnocolon\r\n\r\n", nil, stStopped, false},
		// net/http accepts a space before the colon (go.dev/issue/34540),
		// and so a different header: "Content-Length " is not a length.
		{"space before colon", "GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
			[]string{"GET / Content-Length =5", "GET /b"}, stHead, false},
		{"bad version stops", "GET / HTTP/x\r\n\r\n", nil, stStopped, false},
		{"oversized head stops", "GET / HTTP/1.1\r\nA: " + strings.Repeat("a", maxRawHead), nil, stStopped, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, step := range []int{0, 1, 7} {
				s := sniffAll([]byte(tt.stream), step)
				var got []string
				for _, h := range s.heads {
					got = append(got, describe(h))
				}
				if !slices.Equal(got, tt.want) || s.state != tt.wantState || s.upgraded != tt.upgraded {
					t.Fatalf("step %d: heads %q state %d upgraded %v; want %q state %d upgraded %v",
						step, got, s.state, s.upgraded, tt.want, tt.wantState, tt.upgraded)
				}
			}
		})
	}
}

func describe(h rawHead) string {
	parts := []string{h.method, h.target}
	for _, f := range h.headers {
		parts = append(parts, f.Name+"="+f.Value)
	}
	return strings.Join(parts, " ")
}

func TestSnifferQueueBound(t *testing.T) {
	s := sniffAll([]byte(strings.Repeat("GET / HTTP/1.1\r\n\r\n", maxQueuedHeads+1)), 0)
	if len(s.heads) != maxQueuedHeads || s.state != stStopped {
		t.Fatalf("%d heads queued, state %d", len(s.heads), s.state)
	}
	if _, ok := s.take("GET", "/"); !ok || len(s.heads) != maxQueuedHeads-1 {
		t.Fatalf("take left %d heads", len(s.heads))
	}
}

func TestSnifferTakeSkipsUnhandled(t *testing.T) {
	s := sniffAll([]byte("OPTIONS * HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\nA: 1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), 0)
	hs, ok := s.take("GET", "/a")
	if !ok || len(hs) != 1 || hs[0] != (Header{"A", "1"}) || len(s.heads) != 1 {
		t.Fatalf("take = %v %v, %d left", hs, ok, len(s.heads))
	}
	if _, ok := s.take("GET", "/nope"); ok || len(s.heads) != 0 {
		t.Fatalf("take of an unknown request = %v, %d left", ok, len(s.heads))
	}
}

// FuzzSniffer checks two properties on any byte stream: how the stream is
// split into reads does not change what is recorded, and every request
// net/http's ReadRequest parses (with its body read) is recorded, in order,
// with the same method and target, unless recording stopped at a CONNECT
// or Upgrade request before it.
func FuzzSniffer(f *testing.F) {
	for _, seed := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\n\r\n",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: v\r\n\r\nGET /n HTTP/1.1\r\n\r\n",
		"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\nxGET / HTTP/1.0\n\n",
		"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nA: 1\r\n 2\r\n\r\n",
	} {
		f.Add([]byte(seed), uint8(3))
	}
	f.Fuzz(func(t *testing.T, stream []byte, step uint8) {
		whole := sniffAll(stream, 0)
		pieces := sniffAll(stream, int(step))
		if whole.state != pieces.state || whole.upgraded != pieces.upgraded || len(whole.heads) != len(pieces.heads) {
			t.Fatalf("split reads changed the result: state %d/%d, %d/%d heads",
				whole.state, pieces.state, len(whole.heads), len(pieces.heads))
		}
		for i := range whole.heads {
			if describe(whole.heads[i]) != describe(pieces.heads[i]) {
				t.Fatalf("head %d: %q read whole, %q in pieces", i, describe(whole.heads[i]), describe(pieces.heads[i]))
			}
		}

		br := bufio.NewReader(bytes.NewReader(stream))
		for i := 0; i < maxQueuedHeads; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if i >= len(whole.heads) {
				if !whole.upgraded {
					t.Fatalf("net/http read request %d (%s %s) that was not recorded", i, req.Method, req.RequestURI)
				}
				return
			}
			if h := whole.heads[i]; h.method != req.Method || h.target != req.RequestURI {
				t.Fatalf("request %d: recorded %s %s, net/http read %s %s", i, h.method, h.target, req.Method, req.RequestURI)
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
		}
	})
}
