// Package browser drives real browsers (headless Firefox ESR and
// Chromium, from Debian's packages) through localproxy → coordinator to
// local sites that behave like a video site and a webmail, over HTTPS
// (HTTP/2) and plain HTTP, and to the same sites exposed through the
// reverse direction (coordinator's public HTTPS and HTTP ports). There is
// no WebDriver: each page checks itself and posts its verdict to the site,
// which the test waits for.
//
// Nothing leaves the machine: the sites have host names (video.test,
// mail.test) that only the test's coordinator dialer knows, and it refuses
// every other target without resolving it. The test CA is made at run time
// and trusted only by the browser profiles the test creates.
package browser

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// film is made once: 10 minutes of 160x120 at 280 kbit/s, 21 MB, more
// than a browser buffers ahead, so the seek needs a new range request.
var film = sync.OnceValue(func() []byte {
	return makeWebM(webmVideo{Width: 160, Height: 120, FPS: 10, Seconds: 600, FrameBytes: 3500})
})

// testSiteConfig keeps the run short: playback needs a couple of seconds
// per video page, the long-poll three.
var testSiteConfig = siteConfig{
	PollHold:   3 * time.Second,
	UploadSize: 5 << 20,
	WSPings:    5,
}

// chain is the pages each browser visits, each reporting before the
// next opens: both sites over HTTPS, then both over plain HTTP.
var chain = []string{"https://video.test/", "https://mail.test/", "http://video.test/", "http://mail.test/"}

// runBound bounds a whole chain (Firefox's first start with a fresh
// profile alone takes several seconds on a loaded machine).
const runBound = 150 * time.Second

// env is one test's site, coordinator and localproxy.
type env struct {
	ca   *testCA
	site *site
	lab  *lab
	logs *logBuffer
}

// newEnv starts the sites, coordinator and localproxy (with fast open if
// fastOpen) for one browser run.
func newEnv(t *testing.T, fastOpen bool) *env {
	t.Helper()
	e := &env{}
	var log *slog.Logger
	e.ca, e.site, e.logs, log = startSites(t)
	tg := newTargets(t, map[string]string{
		videoHost + ":443": e.site.addr("https"), mailHost + ":443": e.site.addr("https"),
		videoHost + ":80": e.site.addr("http"), mailHost + ":80": e.site.addr("http"),
	})
	e.lab = startLab(t, tg, log, fastOpen)
	t.Cleanup(func() {
		if f := os.Getenv("BROWSER_TEST_LOG"); f != "" {
			os.WriteFile(f, []byte(e.logs.String()+"\n--- access log ---\n"+e.lab.access.String()), 0o644)
		}
	})
	return e
}

// startSites starts the test sites with a fresh CA; everything the test
// starts logs to the returned logger, whose output is shown when the test
// fails.
func startSites(t *testing.T) (*testCA, *site, *logBuffer, *slog.Logger) {
	t.Helper()
	ca, logs := newTestCA(t, videoHost, mailHost), &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := testSiteConfig
	cfg.Media = film()
	s := startSite(t, cfg, ca.leaf, log.With("service", "site"))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("site, coordinator and localproxy log (last 16 kB):\n%s", tail(logs.String(), 16<<10))
		}
	})
	return ca, s, logs, log
}

// TestBrowsers loads both sites in each browser through the proxy, again
// with fast open, then shows that with the proxy stopped the same run
// never reaches the sites; last, the sites exposed through the reverse
// direction, reached on coordinator's public HTTPS and HTTP ports.
// The two browsers run side by side, each with its own sites, coordinator
// and localproxy.
func TestBrowsers(t *testing.T) {
	if testing.Short() {
		t.Skip("real browsers take about a minute; skipped with -short")
	}
	for _, b := range browsers {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			bin := lookBrowser(t, b)
			t.Run("through_proxy", func(t *testing.T) { testThroughProxy(t, b, bin, false) })
			t.Run("through_proxy_fast_open", func(t *testing.T) { testThroughProxy(t, b, bin, true) })
			t.Run("proxy_stopped", func(t *testing.T) { testProxyStopped(t, b, bin) })
			t.Run("exposed_app", func(t *testing.T) { testExposed(t, b, bin) })
		})
	}
}

func testThroughProxy(t *testing.T, b browserSpec, bin string, fastOpen bool) {
	e := newEnv(t, fastOpen)
	rec := runChain(t, b, bin, e.site, e.lab.proxy.Addr().String(), e.ca.certPEM)
	for _, scheme := range []string{"https", "http"} {
		t.Run(scheme, func(t *testing.T) {
			checkVideo(t, rec, scheme)
			checkMail(t, rec, scheme)
			// HTTPS through CONNECT is end to end: HTTP/2, as browsers
			// speak to a site offering it.
			checkProtocols(t, rec, scheme, map[string]string{"https": "HTTP/2.0", "http": "HTTP/1.1"}[scheme])
		})
	}
	checkProxyUsed(t, e)
	if st := e.lab.proxy.Client().Stats(); fastOpen && st.FastOpenSessions != st.Sessions {
		t.Errorf("with fast open, %d of %d sessions were fast opens, want all", st.FastOpenSessions, st.Sessions)
	}
}

// runChain opens the chain of pages in the browser, with proxy as its
// HTTP proxy, and waits for every page's verdict; it fails the test for
// a page that failed and returns what the site recorded.
func runChain(t *testing.T, b browserSpec, bin string, s *site, proxy string, caPEM []byte) record {
	t.Helper()
	start := time.Now()
	p := launch(t, b, bin, proxy, caPEM, s.newRun(b.name, chain...))
	select {
	case <-s.runDone(b.name):
	case <-p.exited():
		t.Fatalf("%s exited (%v) before the pages reported; verdicts so far: %+v", b.name, p.err, s.verdicts(b.name))
	case <-time.After(runBound):
		t.Fatalf("no verdict from every page within %v; verdicts so far: %+v", runBound, s.verdicts(b.name))
	}
	t.Logf("%s: %d pages reported in %v", b.name, len(chain), time.Since(start).Round(time.Millisecond))
	for _, v := range s.verdicts(b.name) {
		if !v.OK {
			t.Errorf("page %s failed: %v (checks %v)", v.URL, v.Errors, v.Checks)
		}
	}
	p.stop(t) // before reading the records: nothing is still in flight
	return s.snapshot()
}

// checkVideo: playback made range requests, one of them (the seek) from
// far into the file, all answered 206.
func checkVideo(t *testing.T, rec record, scheme string) {
	var n, far int
	for _, r := range rec.Ranges {
		if r.Scheme != scheme {
			continue
		}
		n++
		start, ok := rangeStart(r.Range)
		if !ok || r.Status != 206 {
			t.Errorf("media request with Range %q answered %d, want a range answered 206", r.Range, r.Status)
		}
		if start > 0 {
			far++
		}
	}
	if n < 2 || far == 0 {
		t.Errorf("media: %d range requests, %d from past the start; want at least 2 and 1 (a seek): %+v", n, far, rec.Ranges)
	}
}

// checkMail: the server side of the webmail page's checks.
func checkMail(t *testing.T, rec record, scheme string) {
	var headers, polls, ws, uploads int
	for _, h := range rec.Headers {
		if h.Scheme == scheme {
			headers++
			if h.Client != mailClient || !strings.HasPrefix(h.RequestID, "rid-") || h.User != mailUser {
				t.Errorf("custom headers arrived as %+v, want X-Mail-Client %q and X-Request-Id rid-…", h, mailClient)
			}
		}
	}
	for _, p := range rec.Polls {
		if p.Scheme == scheme && p.Answered {
			polls++
		}
	}
	for _, w := range rec.WS {
		if w.Scheme == scheme {
			ws++
			if w.Echoed != testSiteConfig.WSPings || w.Err != "" || w.User != mailUser {
				t.Errorf("websocket: %+v, want %d messages echoed for %s and a normal close", w, testSiteConfig.WSPings, mailUser)
			}
		}
	}
	for _, u := range rec.Uploads {
		if u.Scheme == scheme {
			uploads++
			if !u.OK || u.Size != int64(testSiteConfig.UploadSize) {
				t.Errorf("upload: %+v, want %d bytes with the expected sha256", u, testSiteConfig.UploadSize)
			}
		}
	}
	if headers != 1 || polls != 1 || ws != 1 || uploads != 1 {
		t.Errorf("webmail: %d API calls with custom headers, %d long-polls answered, %d websockets, %d uploads; want 1 each", headers, polls, ws, uploads)
	}
	if len(rec.Logins) != 2 {
		t.Errorf("logins: %v, want one per scheme", rec.Logins)
	}
}

// checkProtocols: the scheme's requests reached the site over want (the
// websocket may use its own HTTP/1.1 connection).
func checkProtocols(t *testing.T, rec record, scheme, want string) {
	var n int
	for _, r := range rec.Requests {
		if r.Scheme != scheme || r.Path == "/ws" {
			continue
		}
		n++
		if r.Proto != want {
			t.Errorf("%s %s://%s%s over %s, want %s", r.Method, scheme, r.Host, r.Path, r.Proto, want)
		}
	}
	if n == 0 {
		t.Errorf("no %s requests reached the site", scheme)
	}
}

// checkProxyUsed: localproxy's access log and counters show the
// browser's sessions, and coordinator dialed every site address.
func checkProxyUsed(t *testing.T, e *env) {
	seen := map[string]bool{}
	for _, a := range e.lab.access.entries(t) {
		if a.Status >= 200 && a.Status < 400 && a.Session != "" {
			seen[a.Method+" "+siteOf(a.Target)] = true
		}
	}
	for _, want := range []string{"CONNECT video.test:443", "CONNECT mail.test:443", "GET video.test:80", "GET mail.test:80", "POST mail.test:80"} {
		if !seen[want] {
			t.Errorf("localproxy access log has no successful %q session; it has %v", want, seen)
		}
	}
	if st := e.lab.proxy.Client().Stats(); st.Sessions < 5 {
		t.Errorf("localproxy tunnel sessions: %d, want the browser's (at least 5)", st.Sessions)
	}
	dialed, refused := e.lab.targets.counts()
	for addr := range e.lab.targets.routes {
		if dialed[addr] == 0 {
			t.Errorf("coordinator never dialed %s (dialed %v)", addr, dialed)
		}
	}
	t.Logf("coordinator dialed %v; refused %d other targets: %v", dialed, len(refused), refused)
}

// siteOf reduces an access-log target (host:port, or an absolute URL) to
// host:port.
func siteOf(target string) string {
	if rest, ok := strings.CutPrefix(target, "http://"); ok {
		host, _, _ := strings.Cut(rest, "/")
		if _, _, err := net.SplitHostPort(host); err != nil {
			host += ":80"
		}
		return host
	}
	return target
}

// rangeStart parses the first byte of "bytes=N-…".
func rangeStart(h string) (int64, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil
}

// testProxyStopped runs the same chain with localproxy stopped and its
// port held by a listener that only notes what the browser asks for and
// hangs up: the browser tries the proxy, and the site hears nothing.
func testProxyStopped(t *testing.T, b browserSpec, bin string) {
	e := newEnv(t, false)
	addr := e.lab.proxy.Addr().String()
	e.lab.stopProxy()
	dead := listenDead(t, addr)
	first := e.site.newRun(b.name, chain...)
	launch(t, b, bin, addr, e.ca.certPEM, first)
	deadline := time.After(runBound)
	for !dead.asked(videoHost) {
		select {
		case <-e.site.runDone(b.name):
			t.Fatal("the pages reported with the proxy stopped")
		case <-deadline:
			t.Fatalf("%s did not try the stopped proxy for %s within %v (it asked for %v)", b.name, videoHost, runBound, dead.requests())
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The browser has tried and been hung up on. Give it a moment to
	// find another way (there is none).
	select {
	case <-e.site.runDone(b.name):
		t.Fatal("the pages reported with the proxy stopped")
	case <-time.After(2 * time.Second):
	}
	if rec := e.site.snapshot(); len(rec.Requests) != 0 {
		t.Errorf("the site got %d requests with the proxy stopped: %+v", len(rec.Requests), rec.Requests)
	}
	if dialed, _ := e.lab.targets.counts(); len(dialed) != 0 {
		t.Errorf("coordinator dialed %v with the proxy stopped", dialed)
	}
	t.Logf("with the proxy stopped %s asked the dead port for %v and the site heard nothing", b.name, dead.requests())
}

// deadProxy holds a stopped proxy's port: it reads each connection's
// request line, notes it and hangs up.
type deadProxy struct {
	ln net.Listener
	wg sync.WaitGroup
	mu sync.Mutex
	rq []string
}

func listenDead(t *testing.T, addr string) *deadProxy {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("take over the stopped proxy's port: %v", err)
	}
	d := &deadProxy{ln: ln}
	d.wg.Go(d.serve)
	t.Cleanup(func() { ln.Close(); d.wg.Wait() })
	return d
}

func (d *deadProxy) serve() {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			return
		}
		d.wg.Go(func() {
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 512)
			n, _ := c.Read(buf)
			line, _, _ := strings.Cut(string(buf[:n]), "\r\n")
			d.mu.Lock()
			d.rq = append(d.rq, line)
			d.mu.Unlock()
		})
	}
}

func (d *deadProxy) asked(host string) bool {
	for _, r := range d.requests() {
		if strings.Contains(r, host) {
			return true
		}
	}
	return false
}

func (d *deadProxy) requests() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.rq...)
}
