// Package demoapp is the small REST service the demo and the tests expose
// through the tunnel: it answers every request with what it received, and
// has endpoints for downloads, server-sent events and a websocket echo.
package demoapp

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// Echo is the JSON answer to any request the other endpoints do not take.
type Echo struct {
	Method     string              `json:"method"`
	Path       string              `json:"path"`
	Query      string              `json:"query"`
	Host       string              `json:"host"`
	RemoteAddr string              `json:"remote_addr"`
	Headers    map[string][]string `json:"headers"`
	HeaderKeys []string            `json:"header_keys"` // sorted, canonical case
	BodyLength int64               `json:"body_length"`
	BodySHA256 string              `json:"body_sha256"`
	Trailers   map[string][]string `json:"trailers,omitempty"`
}

// maxSSE bounds the events one /sse request may ask for.
const maxSSE = 10000

// Handler returns the demo app.
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /bytes", serveBytes)
	mux.HandleFunc("GET /sse", serveSSE)
	mux.HandleFunc("GET /ws", serveWebsocket)
	mux.HandleFunc("/", serveEcho)
	return mux
}

func serveEcho(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	e := Echo{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Host: r.Host, RemoteAddr: r.RemoteAddr,
		Headers: r.Header, BodyLength: n, BodySHA256: hex.EncodeToString(h.Sum(nil))}
	for k := range r.Header {
		e.HeaderKeys = append(e.HeaderKeys, k)
	}
	sort.Strings(e.HeaderKeys)
	if len(r.Trailer) > 0 {
		e.Trailers = r.Trailer
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(e)
}

// serveBytes streams n deterministic bytes: byte i is i*7 mod 251.
func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "want /bytes?n=COUNT", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	buf := make([]byte, 64<<10)
	for off := int64(0); off < n; {
		chunk := buf[:min(int64(len(buf)), n-off)]
		for i := range chunk {
			chunk[i] = byte((off + int64(i)) * 7 % 251)
		}
		if _, err := w.Write(chunk); err != nil {
			return
		}
		off += int64(len(chunk))
	}
}

// serveSSE sends n server-sent events, interval apart, flushing each.
func serveSSE(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.Atoi(r.URL.Query().Get("n"))
	if err != nil || n < 0 || n > maxSSE {
		http.Error(w, fmt.Sprintf("want /sse?n=COUNT (at most %d)&interval=DURATION", maxSSE), http.StatusBadRequest)
		return
	}
	interval := 100 * time.Millisecond
	if s := r.URL.Query().Get("interval"); s != "" {
		if interval, err = time.ParseDuration(s); err != nil || interval < 0 || interval > time.Minute {
			http.Error(w, "bad interval", http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	rc := http.NewResponseController(w)
	t := time.NewTicker(max(interval, time.Millisecond))
	defer t.Stop()
	for i := range n {
		fmt.Fprintf(w, "id: %d\ndata: event %d at %s\n\n", i, i, time.Now().UTC().Format(time.RFC3339Nano))
		if err := rc.Flush(); err != nil {
			return
		}
		if i < n-1 {
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
		}
	}
}

// serveWebsocket echoes every message back.
func serveWebsocket(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer c.CloseNow()
	for {
		typ, msg, err := c.Read(r.Context())
		if err != nil {
			return
		}
		if err := c.Write(r.Context(), typ, msg); err != nil {
			return
		}
	}
}
