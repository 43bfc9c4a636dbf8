// Package inspector serves localproxy's web page at /ui/: the requests
// going through it, both directions, live (server-sent events), the detail
// of an exposed app's request with replay, and localproxy's state with a
// throughput chart. It keeps a ring of the last requests, so its memory is
// bounded. The page and its script are embedded: nothing is fetched from
// elsewhere.
package inspector

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures an Inspector. Zero values select the defaults given.
type Config struct {
	// History is how many requests are kept. Default 500.
	History int
	// BodyLimit caps each captured body (exposed apps only). Default 64 KiB.
	BodyLimit int
	// State, if set, returns localproxy's state, shown as is (JSON).
	State func() any
	// Throughput, if set, returns the bytes the forward proxy moved since
	// start, each way (up: towards the targets); the inspector adds what
	// it saw of the exposed apps' traffic.
	Throughput func() (up, down int64)
	// Credentials, if set, are required of the page's visitors (HTTP
	// Basic): set them when the page is reachable beyond loopback.
	Credentials func(user, password string) bool
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
}

// Kinds of Record.
const (
	KindProxy  = "proxy"  // a browser's request through the forward proxy
	KindPublic = "public" // a public request to an exposed app
	KindReplay = "replay" // a request the page replayed to an exposed app
)

// Record is one request or tunnel.
type Record struct {
	ID       uint64    `json:"id"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Method   string    `json:"method"`
	Host     string    `json:"host"`
	Path     string    `json:"path,omitempty"`
	Status   int       `json:"status"`
	Up       int64     `json:"bytes_up"`   // towards the target or app
	Down     int64     `json:"bytes_down"` // back to the browser or public client
	Duration float64   `json:"duration_ms"`
	// Transport of a forward-proxy session: "dial-back", "relay",
	// "fast-open" or "direct" (a localhost target).
	Transport string `json:"transport,omitempty"`
	Client    string `json:"client,omitempty"`  // the public client
	Service   string `json:"service,omitempty"` // the exposed app
	TLS       bool   `json:"tls,omitempty"`
	Outcome   string `json:"outcome,omitempty"`
	Detail    bool   `json:"detail"` // headers (and bodies) were captured
	Done      bool   `json:"done"`

	session string  // public: the reverse session, to merge coordinator's record
	logged  bool    // public: coordinator's record was merged
	detail  *detail // exposed apps only
}

// detail is what the page's detail view shows of an exposed app's request.
type detail struct {
	Local       string      `json:"local"` // the app's address
	ReqHeaders  [][2]string `json:"request_headers"`
	RespHeaders [][2]string `json:"response_headers"`
	ReqBody     []byte      `json:"request_body"`
	RespBody    []byte      `json:"response_body"`
	ReqCut      bool        `json:"request_body_cut,omitempty"`
	RespCut     bool        `json:"response_body_cut,omitempty"`
}

// Inspector keeps the requests and serves the page. Run samples the
// throughput; Close ends the event streams.
type Inspector struct {
	cfg   Config
	log   *slog.Logger
	token string // the per-page token actions must carry

	mu      sync.Mutex
	ring    []*Record // oldest first, at most cfg.History
	byID    map[uint64]*Record
	nextID  uint64
	subs    map[chan []byte]struct{}
	closed  bool
	samples []sample     // one a second, the last five minutes
	pending []pendingLog // coordinator's records waiting for their capture, oldest first

	appUp, appDown counter      // the exposed apps' bytes, as captured
	captureQueued  atomic.Int64 // bytes copied for the capture parsers, not yet parsed
}

// sample is the throughput of one second, bytes each way.
type sample struct {
	T    int64 `json:"t"` // Unix seconds
	Up   int64 `json:"up"`
	Down int64 `json:"down"`
}

const chartSeconds = 300

// New returns an Inspector.
func New(cfg Config) (*Inspector, error) {
	if cfg.History < 0 || cfg.BodyLimit < 0 {
		return nil, fmt.Errorf("inspector: history %d and body limit %d must not be negative", cfg.History, cfg.BodyLimit)
	}
	if cfg.History == 0 {
		cfg.History = 500
	}
	if cfg.BodyLimit == 0 {
		cfg.BodyLimit = 64 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Inspector{cfg: cfg, log: cfg.Logger, token: newToken(), byID: make(map[uint64]*Record), subs: make(map[chan []byte]struct{})}, nil
}

// Run samples the throughput every second, and adds coordinator's records
// that found no capture, until ctx ends.
func (in *Inspector) Run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastUp, lastDown int64
	first := true
	for {
		up, down := in.appUp.load(), in.appDown.load()
		if in.cfg.Throughput != nil {
			u, d := in.cfg.Throughput()
			up, down = up+u, down+d
		}
		if !first {
			in.mu.Lock()
			in.samples = append(in.samples, sample{T: time.Now().Unix(), Up: max(0, up-lastUp), Down: max(0, down-lastDown)})
			if len(in.samples) > chartSeconds {
				in.samples = in.samples[len(in.samples)-chartSeconds:]
			}
			in.mu.Unlock()
		}
		first, lastUp, lastDown = false, up, down
		in.flushPending(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close ends the event streams of the pages open.
func (in *Inspector) Close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.closed = true
	for ch := range in.subs {
		close(ch)
		delete(in.subs, ch)
	}
}

// Add records r and returns its id.
func (in *Inspector) Add(r Record) uint64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.addLocked(&r)
}

func (in *Inspector) addLocked(r *Record) uint64 {
	in.nextID++
	r.ID = in.nextID
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Detail = r.detail != nil
	if len(in.ring) >= in.cfg.History {
		delete(in.byID, in.ring[0].ID)
		in.ring[0] = nil
		in.ring = in.ring[1:]
	}
	in.ring = append(in.ring, r)
	in.byID[r.ID] = r
	in.publishLocked(r)
	return r.ID
}

// update changes the record id, if still kept, and tells the pages.
func (in *Inspector) update(id uint64, f func(*Record)) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if r, ok := in.byID[id]; ok {
		f(r)
		r.Detail = r.detail != nil
		if r.Done && r.Kind == KindPublic && !r.logged {
			in.captureDoneLocked(r)
		}
		in.publishLocked(r)
	}
}

// AddPublic records coordinator's record of a public request on the
// reverse session session. It completes the captured request it
// describes (same session, method, path and status), or else waits up to
// publicWait for it (the capture may lag behind), and is then added as a
// request of its own (one coordinator answered itself: a refused
// password, a client not allowed, an app that never answered).
func (in *Inspector) AddPublic(r Record, session string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	r.Kind, r.session, r.logged, r.Done = KindPublic, session, true, true
	for _, c := range in.ring {
		if c.Kind == KindPublic && !c.logged && c.Done && sameRequest(c, &r) {
			in.mergeLocked(c, &r)
			return
		}
	}
	in.pending = append(in.pending, pendingLog{r, time.Now().Add(publicWait)})
	if len(in.pending) > in.cfg.History {
		in.addLocked(&in.pending[0].r)
		in.pending = in.pending[1:]
	}
}

// publicWait is how long coordinator's record of a public request waits
// for the captured request it describes.
const publicWait = time.Second

// pendingLog is a record of coordinator's waiting for its capture.
type pendingLog struct {
	r     Record
	until time.Time
}

func sameRequest(c, r *Record) bool {
	return c.session == r.session && c.Method == r.Method && c.Path == r.Path && c.Status == r.Status
}

// mergeLocked completes the captured c with coordinator's record r.
func (in *Inspector) mergeLocked(c, r *Record) {
	c.logged, c.Client, c.TLS, c.Outcome = true, r.Client, r.TLS, r.Outcome
	if c.Service == "" {
		c.Service = r.Service
	}
	// A capture that gave up on a long body counted less.
	c.Up, c.Down, c.Duration = max(c.Up, r.Up), max(c.Down, r.Down), max(c.Duration, r.Duration)
	in.publishLocked(c)
}

// captureDoneLocked merges a record of coordinator's waiting for the
// captured request c, now answered.
func (in *Inspector) captureDoneLocked(c *Record) {
	for i := range in.pending {
		if sameRequest(c, &in.pending[i].r) {
			in.mergeLocked(c, &in.pending[i].r)
			in.pending = append(in.pending[:i], in.pending[i+1:]...)
			return
		}
	}
}

// flushPending adds coordinator's records that waited long enough as
// requests of their own.
func (in *Inspector) flushPending(now time.Time) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for len(in.pending) > 0 && now.After(in.pending[0].until) {
		in.addLocked(&in.pending[0].r)
		in.pending = in.pending[1:]
	}
}

// publishLocked sends r to every page's event stream; a page too slow to
// take it loses its stream (its EventSource reconnects and reloads).
func (in *Inspector) publishLocked(r *Record) {
	if len(in.subs) == 0 {
		return
	}
	b, err := json.Marshal(r)
	if err != nil {
		return
	}
	for ch := range in.subs {
		select {
		case ch <- b:
		default:
			close(ch)
			delete(in.subs, ch)
		}
	}
}

// Records returns the records kept, newest first.
func (in *Inspector) Records() []Record {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]Record, 0, len(in.ring))
	for i := len(in.ring) - 1; i >= 0; i-- {
		out = append(out, *in.ring[i])
	}
	return out
}

// subscribe returns a channel of the records added or changed from now
// on, JSON-encoded, and its cancel function.
func (in *Inspector) subscribe() (<-chan []byte, func()) {
	ch := make(chan []byte, 256)
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		close(ch)
		return ch, func() {}
	}
	in.subs[ch] = struct{}{}
	return ch, func() {
		in.mu.Lock()
		defer in.mu.Unlock()
		if _, ok := in.subs[ch]; ok {
			delete(in.subs, ch)
			close(ch)
		}
	}
}

// Handler returns the page and its API, to serve under /ui/.
func (in *Inspector) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ui/{$}", in.serveIndex)
	mux.Handle("GET /ui/assets/", http.StripPrefix("/ui/", http.FileServerFS(assetsFS)))
	mux.HandleFunc("GET /ui/api/requests", in.serveRecords)
	mux.HandleFunc("GET /ui/api/requests/{id}", in.serveDetail)
	mux.HandleFunc("GET /ui/api/state", in.serveState)
	mux.HandleFunc("GET /ui/api/events", in.serveEvents)
	mux.HandleFunc("POST /ui/api/replay", in.serveReplay)
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/", http.StatusFound) })
	return in.guard(mux)
}
