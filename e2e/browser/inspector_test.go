package browser

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestInspector drives the inspector page of the real localproxy binary
// (served on the proxy's own port, at /ui/) in headless Chromium, over
// the DevTools protocol: a forward-proxy request and a public request to
// an exposed app appear in the page within 2 s; the public one's detail
// shows its headers (Authorization masked) and body; Replay reaches the
// app again and shows the new response; the chart has data. A foreign
// Host or Origin is refused. The screenshot is kept as a test artifact
// (and copied to docs/inspector.png with UPDATE_SCREENSHOT=1).
//
// Firefox ESR is not driven: it has no DevTools protocol any more, and
// this harness has no WebDriver BiDi client.
func TestInspector(t *testing.T) {
	b := browsers[1]
	bin := lookBrowser(t, b)
	bins := buildBinaries(t)

	// The exposed app counts its requests and says the count.
	var count atomic.Int64
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := count.Add(1)
		body, _ := io.ReadAll(r.Body)
		if size, err := strconv.Atoi(r.URL.Query().Get("size")); err == nil && size <= 1<<20 {
			w.Write(bytes.Repeat([]byte("x"), size)) // a download, for the chart
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Set-Cookie", "appsession=topsecret")
		fmt.Fprintf(w, `{"count": %d, "path": %q, "got": %q}`, n, r.URL.Path, body)
	})}
	appLn := listenTCP(t)
	go app.Serve(appLn)
	t.Cleanup(func() { app.Close() })

	certs, _ := filepath.Abs(filepath.Join("..", "..", "testdata", "certs"))
	stun, quicPort, httpPort, proxyPort := freePort(t, "udp"), freePort(t, "udp"), freePort(t, "tcp"), freePort(t, "tcp")
	runBin(t, bins, "reporter", "--listen", stun)
	runBin(t, bins, "coordinator", "--listen", quicPort, "--cert", filepath.Join(certs, "coordinator.pem"),
		"--key", filepath.Join(certs, "coordinator-key.pem"), "--token", "ui-token", "--allow-private-targets",
		"--http", httpPort, "--domain", "localhost")
	lp := runBin(t, bins, "localproxy", "--listen", proxyPort, "--coordinator", quicPort, "--reporter", stun,
		"--token", "ui-token", "--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost",
		"--expose", "app="+appLn.Addr().String(), "--log-public-requests", "--idle-restart", "-1s")
	waitUntil(t, 15*time.Second, "localproxy ready with the app published", func() bool {
		s := lp.String()
		return strings.Contains(s, "localproxy ready") && strings.Contains(s, "service published")
	})

	ui := "http://" + proxyPort + "/ui/"
	page := openDevTools(t, b, bin, ui)
	page.waitTrue(t, 10*time.Second, "the page's event stream is live", `document.getElementById("live").textContent === "live"`)

	// Traffic both ways.
	proxyURL, _ := url.Parse("http://" + proxyPort)
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + appLn.Addr().String() + "/browsing?q=1")
	if err != nil {
		t.Fatalf("forward request: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	req, _ := http.NewRequest("POST", "http://"+httpPort+"/api/orders", strings.NewReader(`{"item":"tea","qty":2}`))
	req.Host = "app.localhost"
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer s3cr3t-token")
	req.Header.Set("Cookie", "id=cookie-secret")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("public request: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	sent := time.Now()
	rows := `[...document.querySelectorAll("#requests tbody tr")].map(tr => tr.dataset.kind + " " + tr.querySelector(".method").textContent + " " + tr.querySelector(".path").textContent + " " + tr.querySelector(".status").textContent).join("\n")`
	page.waitTrue(t, 2*time.Second, "both requests in the page", `(`+rows+`).includes("proxy GET /browsing?q=1 200") && (`+rows+`).includes("public POST /api/orders 200")`)
	t.Logf("both requests shown %v after they were answered", time.Since(sent).Round(time.Millisecond))
	if got := page.eval(t, `document.querySelector('#requests tbody tr[data-kind="proxy"]').classList.contains("has-detail")`); got != "false" {
		t.Errorf("the forward proxy's request has a detail view (headers, bodies): it must not")
	}

	// Detail: headers (secrets masked), body as JSON.
	page.eval(t, `document.querySelector('#requests tbody tr[data-kind="public"]').click()`)
	page.waitTrue(t, 3*time.Second, "the detail view", `!document.getElementById("detail").hidden && document.getElementById("r-headers").value.includes("Authorization")`)
	headers := page.eval(t, `document.getElementById("r-headers").value + "\n" + document.getElementById("resp-headers").textContent`)
	for _, secret := range []string{"s3cr3t-token", "cookie-secret", "topsecret"} {
		if strings.Contains(headers, secret) {
			t.Errorf("the detail view shows %q unmasked:\n%s", secret, headers)
		}
	}
	if !strings.Contains(headers, "Bearer ••••••") {
		t.Errorf("Authorization not shown masked:\n%s", headers)
	}
	page.eval(t, `document.querySelector('.views[data-for="req"] button[data-view="json"]').click()`)
	if got := page.eval(t, `document.getElementById("r-body").value`); !strings.Contains(got, "\"item\": \"tea\"") {
		t.Errorf("request body as JSON = %q", got)
	}

	// Replay: the app counts one more request, the page shows its answer.
	before := count.Load()
	page.eval(t, `document.getElementById("replay").click()`)
	want := fmt.Sprintf(`"count": %d`, before+1)
	page.waitTrue(t, 5*time.Second, "the replay's response", `document.getElementById("resp-body").textContent.includes(`+strconv.Quote(want)+`)`)
	if n := count.Load(); n != before+1 {
		t.Errorf("app requests after the replay = %d, want %d", n, before+1)
	}
	if got := page.eval(t, `document.getElementById("resp-body").textContent`); !strings.Contains(got, `\"qty\":2`) {
		t.Errorf("the replay did not send the captured body: %s", got)
	}
	page.waitTrue(t, 5*time.Second, "a replay row", `!!document.querySelector('#requests tbody tr[data-kind="replay"]')`)

	// Some traffic each way for three seconds (bounded: 15 rounds), for
	// the chart.
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := range 15 {
		if resp, err := client.Get(fmt.Sprintf("http://%s/download?size=%d", appLn.Addr(), (i%5+1)<<16)); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/api/orders/%d", httpPort, i), nil)
		req.Host = "app.localhost"
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		time.Sleep(200 * time.Millisecond)
	}

	// State and chart.
	page.waitTrue(t, 5*time.Second, "chart data and the service's URL", `Number(document.getElementById("chart").dataset.points) > 0 && document.querySelector("#services a") !== null`)

	// coordinator's record of each public request completed the captured
	// one: no request is listed twice.
	if n := page.eval(t, `[...document.querySelectorAll('#requests tbody tr[data-kind="public"]')].filter(tr => tr.querySelector(".path").textContent === "/api/orders").length`); n != "1" {
		t.Errorf("the public POST is listed %s times, want once", n)
	}
	page.screenshot(t)

	// Refusals: a foreign Host (DNS rebinding), a foreign Origin, an
	// action without the page's token.
	token := regexp.MustCompile(`name="inspector-token" content="([0-9a-f]+)"`).FindStringSubmatch(get(t, ui, nil))
	if token == nil {
		t.Fatal("no token in the page")
	}
	for _, tt := range []struct {
		name, method, host, origin, token string
		want                              int
	}{
		{"foreign Host", "GET", "rebind.example:" + port(proxyPort), "", "", http.StatusForbidden},
		{"foreign Origin", "POST", "", "http://evil.example", token[1], http.StatusForbidden},
		{"no token", "POST", "", "http://" + proxyPort, "", http.StatusForbidden},
		{"own page", "POST", "", "http://" + proxyPort, token[1], http.StatusNotFound}, // id 999999 is unknown
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := "/ui/api/requests"
			var body io.Reader
			if tt.method == "POST" {
				path, body = "/ui/api/replay", strings.NewReader(`{"id":999999}`)
			}
			req, _ := http.NewRequest(tt.method, "http://"+proxyPort+path, body)
			if tt.host != "" {
				req.Host = tt.host
			}
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			if tt.token != "" {
				req.Header.Set("X-Inspector-Token", tt.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
}

func port(hostport string) string { _, p, _ := net.SplitHostPort(hostport); return p }

func get(t *testing.T, u string, h http.Header) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func listenTCP(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// freePort returns a free loopback address for network ("tcp", "udp").
func freePort(t *testing.T, network string) string {
	t.Helper()
	var c io.Closer
	var addr string
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		c, addr = pc, pc.LocalAddr().String()
	} else {
		ln := listenTCP(t)
		c, addr = ln, ln.Addr().String()
	}
	c.Close()
	return addr
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// buildBinaries builds the commands once per test binary.
func buildBinaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "quictunnel-inspector-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", binDir+"/", "../../cmd/localproxy", "../../cmd/coordinator", "../../cmd/reporter").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	t.Cleanup(func() { os.RemoveAll(binDir) })
	return binDir
}

// runBin runs a command until the test ends.
func runBin(t *testing.T, dir, name string, args ...string) *logBuffer {
	t.Helper()
	out := &logBuffer{}
	cmd := exec.Command(filepath.Join(dir, name), args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop on SIGINT", name)
		}
		if t.Failed() {
			t.Logf("%s output (last 4 kB):\n%s", name, tail(out.String(), 4096))
		}
	})
	return out
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// devtools is a page of a browser driven over the DevTools protocol.
type devtools struct {
	ws *websocket.Conn
	id int
}

// openDevTools starts Chromium headless on url, without a proxy, with its
// DevTools endpoint on a loopback port, and attaches to the page.
func openDevTools(t *testing.T, b browserSpec, bin, pageURL string) *devtools {
	t.Helper()
	spec := b
	spec.start = func(t *testing.T, bin, home, _, _, u string) *exec.Cmd {
		var flags []string
		for _, f := range chromiumFlags("127.0.0.1:1", filepath.Join(home, "profile")) {
			if !strings.HasPrefix(f, "--proxy-") {
				flags = append(flags, f)
			}
		}
		flags = append(flags, "--no-proxy-server", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
			"--window-size=1400,1000", u)
		cmd := exec.Command(bin, flags...)
		cmd.Env = baseEnv(home)
		return cmd
	}
	p := launch(t, spec, bin, "", nil, pageURL)
	re := regexp.MustCompile(`DevTools listening on ws://([0-9.:]+)/`)
	var endpoint string
	waitUntil(t, 30*time.Second, "Chromium's DevTools endpoint", func() bool {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			endpoint = m[1]
			return true
		}
		return false
	})
	var targets []struct{ Type, URL, WebSocketDebuggerURL string }
	waitUntil(t, 10*time.Second, "the page target", func() bool {
		targets = nil
		if err := json.Unmarshal([]byte(get(t, "http://"+endpoint+"/json/list", nil)), &targets); err != nil {
			return false
		}
		for _, tg := range targets {
			if tg.Type == "page" && strings.HasPrefix(tg.URL, pageURL) {
				return true
			}
		}
		return false
	})
	var wsURL string
	for _, tg := range targets {
		if tg.Type == "page" && strings.HasPrefix(tg.URL, pageURL) {
			wsURL = tg.WebSocketDebuggerURL
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, wsURL, nil)
	if err != nil {
		t.Fatalf("DevTools: %v", err)
	}
	ws.SetReadLimit(32 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return &devtools{ws: ws}
}

// call sends one DevTools command and returns its result.
func (d *devtools) call(t *testing.T, method string, params any) json.RawMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.id++
	msg, _ := json.Marshal(map[string]any{"id": d.id, "method": method, "params": params})
	if err := d.ws.Write(ctx, websocket.MessageText, msg); err != nil {
		t.Fatalf("DevTools %s: %v", method, err)
	}
	for {
		_, b, err := d.ws.Read(ctx)
		if err != nil {
			t.Fatalf("DevTools %s: %v", method, err)
		}
		var r struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct{ Message string }
		}
		if json.Unmarshal(b, &r) != nil || r.ID != d.id {
			continue // an event
		}
		if r.Error != nil {
			t.Fatalf("DevTools %s: %s", method, r.Error.Message)
		}
		return r.Result
	}
}

// eval evaluates a JavaScript expression in the page and returns its
// value, as text.
func (d *devtools) eval(t *testing.T, expr string) string {
	t.Helper()
	res := d.call(t, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true})
	var r struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string
			Exception struct{ Description string }
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		t.Fatal(err)
	}
	if r.ExceptionDetails != nil {
		t.Fatalf("page: %s: %s %s", expr, r.ExceptionDetails.Text, r.ExceptionDetails.Exception.Description)
	}
	if s, ok := r.Result.Value.(string); ok {
		return s
	}
	b, _ := json.Marshal(r.Result.Value)
	return string(b)
}

func (d *devtools) waitTrue(t *testing.T, within time.Duration, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for d.eval(t, "(() => { try { return !!("+expr+") } catch (e) { return false } })()") != "true" {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; rows:\n%s", what, within,
				d.eval(t, `[...document.querySelectorAll("#requests tbody tr")].map(tr => tr.textContent).join("\n")`))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// screenshot saves the page as inspector.png among the test's artifacts
// and, with UPDATE_SCREENSHOT=1, as docs/inspector.png.
func (d *devtools) screenshot(t *testing.T) {
	t.Helper()
	res := d.call(t, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true})
	var r struct{ Data string }
	json.Unmarshal(res, &r)
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("screenshot: not a PNG (%v)", err)
	}
	file := filepath.Join(t.ArtifactDir(), "inspector.png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", file)
	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "inspector.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
