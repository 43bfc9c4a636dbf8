package inspector

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

//go:embed assets
var embedded embed.FS

// assetsFS holds assets/, served at /ui/assets/.
var assetsFS fs.FS = embedded

var indexTmpl = template.Must(template.ParseFS(embedded, "assets/index.html"))

func (in *Inspector) serveIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	indexTmpl.Execute(w, struct{ Token string }{in.token})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (in *Inspector) serveRecords(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, in.Records())
}

// detailView is the detail of a record as the page gets it.
type detailView struct {
	Record
	*detail
}

func (in *Inspector) serveDetail(w http.ResponseWriter, r *http.Request) {
	id, _ := strconv.ParseUint(r.PathValue("id"), 10, 64)
	in.mu.Lock()
	rec, ok := in.byID[id]
	var v detailView
	if ok {
		v.Record = *rec
		if rec.detail != nil {
			d := *rec.detail
			v.detail = &d
		}
	}
	in.mu.Unlock()
	if !ok {
		http.Error(w, "inspector: no such request (it may have left the history)", http.StatusNotFound)
		return
	}
	// Secrets are unmasked only when asked, with the page's token (a
	// header a cross-site page cannot set without a preflight).
	if v.detail != nil && !(r.URL.Query().Get("unmask") == "1" && r.Header.Get("X-Inspector-Token") == in.token) {
		v.detail.ReqHeaders, v.detail.RespHeaders = maskAll(v.detail.ReqHeaders), maskAll(v.detail.RespHeaders)
	}
	writeJSON(w, v)
}

func (in *Inspector) serveState(w http.ResponseWriter, r *http.Request) {
	var st any
	if in.cfg.State != nil {
		st = in.cfg.State()
	}
	in.mu.Lock()
	samples := append([]sample(nil), in.samples...)
	in.mu.Unlock()
	writeJSON(w, struct {
		State      any      `json:"state"`
		Throughput []sample `json:"throughput"`
		History    int      `json:"history"`
	}{st, samples, in.cfg.History})
}

// serveEvents streams every record added or changed, as server-sent
// events, until the page leaves or the inspector closes.
func (in *Inspector) serveEvents(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	ch, cancel := in.subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "retry: 1000\n\n")
	rc.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-ping.C:
			io.WriteString(w, ": ping\n\n")
		case b, ok := <-ch:
			if !ok {
				return
			}
			fmt.Fprintf(w, "event: record\ndata: %s\n\n", b)
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// replayRequest is what the page sends to replay a request, edited or not.
type replayRequest struct {
	ID      uint64      `json:"id"`
	Method  string      `json:"method"`
	Path    string      `json:"path"`
	Headers [][2]string `json:"headers"`
	Body    *string     `json:"body"` // nil: the captured body
}

// replayTimeout bounds a replay.
const replayTimeout = 15 * time.Second

// serveReplay sends a captured request (as edited) to its local app again
// and answers with the new exchange's record id.
func (in *Inspector) serveReplay(w http.ResponseWriter, r *http.Request) {
	var rr replayRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&rr); err != nil {
		http.Error(w, "inspector: bad replay request: "+err.Error(), http.StatusBadRequest)
		return
	}
	in.mu.Lock()
	orig, ok := in.byID[rr.ID]
	var d detail
	var service string
	if ok && orig.detail != nil {
		d, service = *orig.detail, orig.Service
		if rr.Method == "" {
			rr.Method = orig.Method
		}
		if rr.Path == "" {
			rr.Path = orig.Path
		}
	}
	in.mu.Unlock()
	if !ok || d.Local == "" {
		http.Error(w, "inspector: no captured request to replay with that id", http.StatusNotFound)
		return
	}
	if rr.Headers == nil {
		rr.Headers = d.ReqHeaders
	}
	// A masked value the page sent back stands for the captured one.
	for i, kv := range rr.Headers {
		for _, o := range d.ReqHeaders {
			if strings.EqualFold(o[0], kv[0]) && kv[1] == mask(o[0], o[1]) {
				rr.Headers[i][1] = o[1]
				break
			}
		}
	}
	body := d.ReqBody
	if rr.Body != nil {
		body = []byte(*rr.Body)
	} else if d.ReqCut {
		http.Error(w, "inspector: the captured body was cut at the size cap: send the body to replay", http.StatusConflict)
		return
	}
	rec, err := in.replay(r.Context(), d.Local, service, rr, body)
	if err != nil {
		http.Error(w, "inspector: replay to "+d.Local+" failed: "+err.Error(), http.StatusBadGateway)
		return
	}
	writeJSON(w, struct {
		ID uint64 `json:"id"`
	}{rec})
}

// replay sends one request to the app at local over a fresh connection
// and records the exchange.
func (in *Inspector) replay(ctx context.Context, local, service string, rr replayRequest, body []byte) (uint64, error) {
	if !strings.HasPrefix(rr.Path, "/") {
		return 0, errors.New("the path must start with /")
	}
	ctx, cancel := context.WithTimeout(ctx, replayTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, rr.Method, "http://"+local+rr.Path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header = http.Header{}
	for _, kv := range rr.Headers {
		switch strings.ToLower(kv[0]) {
		case "host":
			req.Host = kv[1]
		case "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade", "proxy-connection":
		default:
			req.Header.Add(kv[0], kv[1])
		}
	}
	if len(body) == 0 {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	tr := &http.Transport{
		Proxy:              nil,
		DialContext:        (&net.Dialer{}).DialContext,
		DisableKeepAlives:  true,
		DisableCompression: true,
	}
	defer tr.CloseIdleConnections()
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	respBody, cut, n, err := readCapped(resp.Body, in.cfg.BodyLimit)
	if err != nil {
		return 0, fmt.Errorf("reading the response: %w", err)
	}
	d := &detail{Local: local, ReqBody: body, RespBody: respBody, RespCut: cut}
	d.ReqHeaders = headerList(req.Header, [2]string{"Host", req.Host})
	d.RespHeaders = headerList(resp.Header)
	return in.Add(Record{Kind: KindReplay, Method: rr.Method, Host: req.Host, Path: rr.Path, Status: resp.StatusCode,
		Up: int64(len(body)), Down: n, Duration: ms(time.Since(start)), Service: service, Client: "inspector", Done: true, detail: d}), nil
}

// readCapped reads r to its end, keeping at most limit bytes.
func readCapped(r io.Reader, limit int) (kept []byte, cut bool, n int64, err error) {
	var b bytes.Buffer
	m, err := io.Copy(&b, io.LimitReader(r, int64(limit)))
	rest, err2 := io.Copy(io.Discard, r)
	return b.Bytes(), rest > 0, m + rest, errors.Join(err, err2)
}

// headerList returns first, then h's fields sorted by name.
func headerList(h http.Header, first ...[2]string) [][2]string {
	keys := make([]string, 0, len(h))
	n := len(first)
	for k, v := range h {
		keys = append(keys, k)
		n += len(v)
	}
	if n == 0 {
		return nil
	}
	slices.Sort(keys)
	out := append(make([][2]string, 0, n), first...)
	for _, k := range keys {
		for _, v := range h[k] {
			out = append(out, [2]string{k, v})
		}
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
