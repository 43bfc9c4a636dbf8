// Package demoapp is the small REST service the demo and the tests expose
// through the tunnel. It answers every request with what it received
// (method, path, query, headers in the order and case they were sent, body
// length and sha256, remote address, host) and has endpoints for
// downloads (/bytes), server-sent events (/sse), a websocket echo (/ws) and
// a health check (/healthz).
//
// Handler is the bare http.Handler for httptest servers; Serve runs it on a
// listener and also records each request's head as it arrived on the wire,
// which is what lets the echo list headers verbatim.
package demoapp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Limits of the demo app's endpoints and server.
const (
	// MaxSSEEvents bounds the events one /sse request may ask for.
	MaxSSEEvents = 10000
	// MaxSSEInterval bounds the interval between /sse events.
	MaxSSEInterval = time.Minute
	// MaxWebsocketMessage is the largest message /ws echoes.
	MaxWebsocketMessage = 1 << 20
	// ShutdownTimeout is how long Serve waits for requests in flight
	// after its context ends before closing their connections.
	ShutdownTimeout = 5 * time.Second
)

// Echo is the JSON answer to any request the other endpoints do not take.
type Echo struct {
	Method     string `json:"method"`
	Path       string `json:"path"`
	Query      string `json:"query"` // raw, without "?"
	Proto      string `json:"proto"`
	Host       string `json:"host"`
	RemoteAddr string `json:"remote_addr"`
	// Headers lists the header fields in the order and case they were
	// received, Host included, when HeadersRaw is true (the app was run
	// with Serve over HTTP/1.x). Otherwise it is rebuilt from the parsed
	// request: canonical names, sorted, Host first.
	Headers    []Header `json:"headers"`
	HeadersRaw bool     `json:"headers_raw"`
	// Header is the header as net/http parsed it (canonical names; Host
	// is in the Host field), for lookups.
	Header     http.Header `json:"header"`
	BodyLength int64       `json:"body_length"`
	BodySHA256 string      `json:"body_sha256"`
	Trailer    http.Header `json:"trailer,omitempty"`
}

// Handler returns the demo app's handler.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /bytes", serveBytes)
	mux.HandleFunc("GET /sse", serveSSE)
	mux.HandleFunc("GET /ws", serveWebsocket)
	mux.HandleFunc("/", serveEcho)
	return takeHead(mux)
}

// rawHeadersKey is the context key of a request's recorded header fields.
type rawHeadersKey struct{}

// takeHead takes each request's recorded head from its connection's
// recorder, for every request, so the recorder's queue stays in step.
func takeHead(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s, ok := r.Context().Value(sniffKey{}).(*sniffer); ok && r.ProtoMajor == 1 {
			if hs, ok := s.take(r.Method, r.RequestURI); ok {
				r = r.WithContext(context.WithValue(r.Context(), rawHeadersKey{}, hs))
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Serve serves the demo app on ln until ctx ends, then shuts down: it
// stops accepting, waits up to ShutdownTimeout for requests in flight and
// closes ln, then waits for every handler (websockets too) to return;
// handlers see ctx's end through r.Context(). Unlike Handler alone it
// records request heads, so Echo reports headers exactly as received. log
// may be nil.
func Serve(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// handlers tracks running handlers, hijacked ones (websockets)
	// included, which Shutdown does not wait for.
	var handlers tracker
	h := Handler()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !handlers.add() {
				http.Error(w, "shutting down", http.StatusServiceUnavailable)
				return
			}
			defer handlers.done()
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(recordingListener{ln}) }()
	select {
	case err := <-served:
		return fmt.Errorf("demo app: serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(shutdown)
	if errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close()
	}
	<-served // http.ErrServerClosed
	// Handlers watch r.Context(), which ctx parents: they are ending.
	handlers.closeAndWait()
	return err
}

// tracker counts running handlers; once closed it admits no more.
type tracker struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

func (t *tracker) add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) done() { t.wg.Done() }

func (t *tracker) closeAndWait() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
}

func serveEcho(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	e := Echo{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Proto: r.Proto, Host: r.Host,
		RemoteAddr: r.RemoteAddr, Header: r.Header, BodyLength: n, BodySHA256: hex.EncodeToString(h.Sum(nil))}
	e.Headers, e.HeadersRaw = r.Context().Value(rawHeadersKey{}).([]Header)
	if !e.HeadersRaw {
		e.Headers = parsedHeaders(r)
	}
	if len(r.Trailer) > 0 {
		e.Trailer = r.Trailer
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(e)
}

// parsedHeaders lists r's header fields when no raw record exists: Host
// first, then canonical names in sorted order.
func parsedHeaders(r *http.Request) []Header {
	hs := []Header{{Name: "Host", Value: r.Host}}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range r.Header {
			if !yield(k) {
				return
			}
		}
	}) {
		for _, v := range r.Header[name] {
			hs = append(hs, Header{Name: name, Value: v})
		}
	}
	return hs
}

// ByteAt is byte i of every /bytes download: i*7 mod 251, a pattern that
// does not repeat at any power-of-two period, so a lost, repeated or
// reordered block shows.
func ByteAt(i int64) byte { return byte(i % 251 * 7 % 251) }

// serveBytes serves n deterministic bytes (see ByteAt) with
// Content-Length; it also answers HEAD and Range requests.
func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "want /bytes?n=COUNT", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, &pattern{size: n})
}

// patternPeriod is the pattern's period: ByteAt(i) depends on i mod 251.
const patternPeriod = 251

// patternTable holds the pattern from offset 0 for 32 KiB and more, so a
// read copies from it at offset off mod patternPeriod instead of computing
// each byte (downloads run at memory speed for the benchmarks). It is
// never modified.
var patternTable = func() []byte {
	b := make([]byte, 32<<10+patternPeriod)
	for i := range b {
		b[i] = ByteAt(int64(i))
	}
	return b
}()

// pattern is an io.ReadSeeker over size bytes of ByteAt.
type pattern struct{ size, off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.size {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.size-p.off)]
	n := 0
	for n < len(b) {
		n += copy(b[n:], patternTable[(p.off+int64(n))%patternPeriod:])
	}
	p.off += int64(n)
	return n, nil
}

func (p *pattern) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += p.off
	case io.SeekEnd:
		offset += p.size
	default:
		return 0, errors.New("pattern: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("pattern: negative position")
	}
	p.off = offset
	return offset, nil
}

// serveSSE sends n server-sent events (id: i, data: event i), interval
// apart, flushing each; the request's end stops it.
func serveSSE(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n < 0 || n > MaxSSEEvents {
		http.Error(w, fmt.Sprintf("want /sse?n=COUNT (at most %d)&interval=DURATION", MaxSSEEvents), http.StatusBadRequest)
		return
	}
	interval := 100 * time.Millisecond
	if s := r.URL.Query().Get("interval"); s != "" {
		if interval, err = time.ParseDuration(s); err != nil || interval < 0 || interval > MaxSSEInterval {
			http.Error(w, fmt.Sprintf("want interval between 0 and %s", MaxSSEInterval), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	rc := http.NewResponseController(w)
	t := time.NewTicker(max(interval, time.Millisecond))
	defer t.Stop()
	for i := range n {
		fmt.Fprintf(w, "id: %d\ndata: event %d\n\n", i, i)
		if err := rc.Flush(); err != nil {
			return
		}
		if i == n-1 {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
	}
}

// serveWebsocket echoes every message back, with its type.
func serveWebsocket(w http.ResponseWriter, r *http.Request) {
	// Any origin: the demo app is reached through proxies under any name.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return // Accept has written the error response
	}
	defer c.CloseNow()
	c.SetReadLimit(MaxWebsocketMessage)
	for {
		typ, msg, err := c.Read(r.Context())
		if err != nil {
			if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
				c.Close(websocket.StatusNormalClosure, "")
			}
			return
		}
		if err := c.Write(r.Context(), typ, msg); err != nil {
			return
		}
	}
}
