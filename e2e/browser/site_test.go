package browser

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Site host names. Browsers ask the proxy for these; only the test's
// coordinator dialer knows where they are (see lab_test.go).
const (
	videoHost = "video.test"
	mailHost  = "mail.test"
)

// siteConfig sets the test site's sizes and delays.
type siteConfig struct {
	// Media is the film video.test plays (WebM).
	Media []byte
	// PollHold is how long the webmail long-poll is held open.
	PollHold time.Duration
	// UploadSize is the attachment size the webmail page uploads.
	UploadSize int
	// WSPings is how many messages the page sends on the websocket.
	WSPings int
}

// site serves video.test and mail.test over HTTPS (HTTP/2 offered) and
// plain HTTP, and records what it receives.
type site struct {
	cfg    siteConfig
	log    *slog.Logger
	tlsLn  net.Listener
	httpLn net.Listener
	srvTLS *http.Server
	srv    *http.Server
	video  *http.ServeMux
	mail   *http.ServeMux
	// ctx is the site's lifetime; its end stops the websocket handlers,
	// whose hijacked connections the servers' Close does not reach.
	ctx    context.Context
	cancel context.CancelFunc
	wsWG   sync.WaitGroup

	mu   sync.Mutex
	rec  record
	runs map[string]*run
}

// record is what the site received, for the test to check.
type record struct {
	Requests []requestRecord
	Ranges   []rangeRecord
	Logins   []string          // users who logged in
	Sessions map[string]string // session cookie value → user
	Headers  []headerRecord    // custom headers on /api/messages
	Polls    []pollRecord
	WS       []wsRecord
	Uploads  []uploadRecord
}

type requestRecord struct {
	Scheme, Host, Proto, Method, Path string
}

type rangeRecord struct {
	Scheme, Range string
	Status        int
	Sent          int64
}

type headerRecord struct {
	Scheme, Client, RequestID, User string
}

type pollRecord struct {
	Scheme   string
	Answered bool // false if the browser left before the answer
}

type wsRecord struct {
	Scheme, Proto, User string
	Echoed              int
	Err                 string
}

type uploadRecord struct {
	Scheme, SHA256 string
	Size           int64
	OK             bool
}

// run is one browser's walk through a chain of pages.
type run struct {
	pages    []string // URLs, in order
	verdicts []verdict
	done     chan struct{} // closed when the last page reports
}

// verdict is what a page reports about itself.
type verdict struct {
	Run    string         `json:"run"`
	Step   int            `json:"step"`
	Page   string         `json:"page"`
	URL    string         `json:"url"`
	OK     bool           `json:"ok"`
	Checks map[string]any `json:"checks"`
	Errors []string       `json:"errors"`
}

// startSite serves the sites on two loopback listeners until the test ends.
func startSite(t *testing.T, cfg siteConfig, cert tls.Certificate, log *slog.Logger) *site {
	t.Helper()
	s := &site{cfg: cfg, log: log, runs: map[string]*run{},
		rec: record{Sessions: map[string]string{}}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.video, s.mail = http.NewServeMux(), http.NewServeMux()
	s.routeVideo()
	s.routeMail()
	var err error
	if s.tlsLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if s.httpLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		s.tlsLn.Close()
		t.Fatal(err)
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	s.srvTLS = &http.Server{Handler: s, ErrorLog: errLog, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}}
	s.srv = &http.Server{Handler: s, ErrorLog: errLog, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	wg.Go(func() { s.srvTLS.ServeTLS(s.tlsLn, "", "") })
	wg.Go(func() { s.srv.Serve(s.httpLn) })
	t.Cleanup(func() {
		s.srvTLS.Close()
		s.srv.Close()
		wg.Wait()
		s.cancel()
		s.wsWG.Wait()
	})
	return s
}

// addr returns the listener serving scheme ("https" or "http").
func (s *site) addr(scheme string) string {
	if scheme == "https" {
		return s.tlsLn.Addr().String()
	}
	return s.httpLn.Addr().String()
}

// ServeHTTP records the request and routes it by host name.
func (s *site) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	scheme := schemeOf(r)
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	s.mu.Lock()
	s.rec.Requests = append(s.rec.Requests, requestRecord{Scheme: scheme, Host: host, Proto: r.Proto, Method: r.Method, Path: r.URL.Path})
	s.mu.Unlock()
	s.log.Debug("site request", "scheme", scheme, "host", host, "proto", r.Proto, "method", r.Method, "uri", r.RequestURI, "range", r.Header.Get("Range"))
	switch host {
	case videoHost:
		s.video.ServeHTTP(w, r)
	case mailHost:
		s.mail.ServeHTTP(w, r)
	default:
		http.Error(w, "no such site here", http.StatusMisdirectedRequest)
	}
}

// schemeOf is the scheme the browser used: the site's own TLS, or what
// coordinator's public side says it received (exposed through the
// tunnel, the site gets plain HTTP).
func schemeOf(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	if p := r.Header.Get("X-Forwarded-Proto"); p != "" {
		return p
	}
	return "http"
}

// newRun registers a chain of pages and returns the first URL to open.
func (s *site) newRun(id string, pages ...string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs[id] = &run{pages: pages, done: make(chan struct{})}
	return pageURL(pages[0], id, 0)
}

func pageURL(base, runID string, step int) string {
	return base + "?" + url.Values{"run": {runID}, "step": {strconv.Itoa(step)}}.Encode()
}

// runDone is closed when every page of the run has reported.
func (s *site) runDone(id string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runs[id].done
}

// verdicts returns the verdicts a run has received so far.
func (s *site) verdicts(id string) []verdict {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]verdict(nil), s.runs[id].verdicts...)
}

// snapshot returns a copy of the record.
func (s *site) snapshot() record {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rec
	r.Requests = append([]requestRecord(nil), r.Requests...)
	r.Ranges = append([]rangeRecord(nil), r.Ranges...)
	r.Logins = append([]string(nil), r.Logins...)
	r.Headers = append([]headerRecord(nil), r.Headers...)
	r.Polls = append([]pollRecord(nil), r.Polls...)
	r.WS = append([]wsRecord(nil), r.WS...)
	r.Uploads = append([]uploadRecord(nil), r.Uploads...)
	return r
}

// handleVerdict stores a page's verdict and answers with the next page.
func (s *site) handleVerdict(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	var v verdict
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&v); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	next, err := s.addVerdict(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.log.Info("verdict", "run", v.Run, "step", v.Step, "page", v.Page, "ok", v.OK, "checks", v.Checks, "errors", v.Errors)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"next": next})
}

func (s *site) addVerdict(v verdict) (next string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rn := s.runs[v.Run]
	if rn == nil {
		return "", fmt.Errorf("unknown run %q", v.Run)
	}
	if v.Step != len(rn.verdicts) {
		return "", fmt.Errorf("run %s: verdict for step %d, want step %d", v.Run, v.Step, len(rn.verdicts))
	}
	rn.verdicts = append(rn.verdicts, v)
	if len(rn.verdicts) == len(rn.pages) {
		close(rn.done)
		return "", nil
	}
	return pageURL(rn.pages[len(rn.verdicts)], v.Run, len(rn.verdicts)), nil
}

// runParams reads the run and step a page was opened with.
func runParams(r *http.Request) (id string, step int, err error) {
	id = r.FormValue("run")
	step, err = strconv.Atoi(r.FormValue("step"))
	if id == "" || err != nil {
		return "", 0, errors.New("missing run or step")
	}
	return id, step, nil
}
