package browser

import (
	"bufio"
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
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestInspector drives the inspector page of the real localproxy binary
// (served on the proxy's own port, at /ui/) in headless Chromium (over
// the DevTools protocol) and Firefox ESR (over WebDriver BiDi): a
// forward-proxy request and a public request to an exposed app appear in
// the page within 2 s; the public one's detail shows its headers
// (Authorization masked) and body; Replay reaches the app again and shows
// the new response; the chart has data. A foreign Host or Origin is
// refused. The screenshot is kept as a test artifact (and Chromium's is
// copied to docs/inspector.png with UPDATE_SCREENSHOT=1).
func TestInspector(t *testing.T) {
	bins := buildBinaries(t)
	for _, b := range browsers {
		t.Run(b.name, func(t *testing.T) { testInspector(t, b, bins) })
	}
}

// page is a browser page the test drives.
type page interface {
	eval(t *testing.T, expr string) string
	screenshotPNG(t *testing.T) []byte
}

func testInspector(t *testing.T, b browserSpec, bins string) {
	bin := lookBrowser(t, b)

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
	var pg page
	if b.name == "chromium" {
		pg = openDevTools(t, b, bin, ui)
	} else {
		pg = openBiDi(t, b, bin, ui)
	}
	page := driver{pg}
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

	// A CONNECT tunnel is one row once it closes, with its transport.
	tun, err := net.Dial("tcp", proxyPort)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(tun, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\n", appLn.Addr())
	br := bufio.NewReader(tun)
	if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	io.WriteString(tun, "GET /tunneled HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
	io.Copy(io.Discard, br)
	tun.Close()
	page.waitTrue(t, 2*time.Second, "the tunnel in the page", `(`+rows+`).includes("proxy CONNECT  200")`)
	if via := page.eval(t, `[...document.querySelectorAll('#requests tbody tr[data-kind="proxy"]')].find(tr => tr.querySelector(".method").textContent === "CONNECT").querySelector(".via").textContent`); via != "dial-back" {
		t.Errorf("the tunnel's transport shown as %q, want dial-back", via)
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
	page.screenshot(t, b.name)

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

// buildBinaries builds the commands into a directory of the test's.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", dir+"/", "../../cmd/localproxy", "../../cmd/coordinator", "../../cmd/reporter").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
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

// driver adds waiting and screenshots to a page.
type driver struct{ page }

func (d driver) waitTrue(t *testing.T, within time.Duration, what, expr string) {
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

// screenshot saves the page as inspector-BROWSER.png among the test's
// artifacts and, with UPDATE_SCREENSHOT=1, Chromium's as
// docs/inspector.png.
func (d driver) screenshot(t *testing.T, browser string) {
	t.Helper()
	png := d.screenshotPNG(t)
	if !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("screenshot: not a PNG")
	}
	file := filepath.Join(t.ArtifactDir(), "inspector-"+browser+".png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", file)
	if os.Getenv("UPDATE_SCREENSHOT") == "1" && browser == "chromium" {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "inspector.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func (d *devtools) screenshotPNG(t *testing.T) []byte {
	t.Helper()
	res := d.call(t, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true})
	var r struct{ Data string }
	json.Unmarshal(res, &r)
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	return png
}

// bidi is a page of Firefox driven over WebDriver BiDi.
type bidi struct {
	ws      *websocket.Conn
	id      int
	context string
}

// openBiDi starts Firefox headless, without a proxy, with WebDriver BiDi
// on a loopback port, and opens url.
func openBiDi(t *testing.T, b browserSpec, bin, pageURL string) *bidi {
	t.Helper()
	spec := b
	spec.start = func(t *testing.T, bin, home, _, _, u string) *exec.Cmd {
		profile := filepath.Join(home, "profile")
		if err := os.MkdirAll(profile, 0o700); err != nil {
			t.Fatal(err)
		}
		// The test profile's prefs, then no proxy: the page is on loopback.
		prefs := firefoxPrefs("127.0.0.1:1") + "user_pref(\"network.proxy.type\", 0);\n"
		if err := os.WriteFile(filepath.Join(profile, "user.js"), []byte(prefs), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--headless", "--no-remote", "--new-instance", "--profile", profile,
			"--remote-debugging-port=0", "--remote-allow-hosts=127.0.0.1", "--window-size=1400,1000", "about:blank")
		cmd.Env = append(baseEnv(home), "MOZ_CRASHREPORTER_DISABLE=1", "MOZ_DISABLE_AUTO_SAFE_MODE=1", "MOZ_REMOTE_SETTINGS_DEVTOOLS=1")
		return cmd
	}
	p := launch(t, spec, bin, "", nil, pageURL)
	re := regexp.MustCompile(`WebDriver BiDi listening on (ws://[0-9.:]+)`)
	var endpoint string
	waitUntil(t, 60*time.Second, "Firefox's WebDriver BiDi endpoint", func() bool {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			endpoint = m[1]
			return true
		}
		return false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, endpoint+"/session", nil)
	if err != nil {
		t.Fatalf("WebDriver BiDi: %v", err)
	}
	ws.SetReadLimit(32 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	d := &bidi{ws: ws}
	d.call(t, "session.new", map[string]any{"capabilities": map[string]any{}})
	var tree struct {
		Contexts []struct{ Context string }
	}
	json.Unmarshal(d.call(t, "browsingContext.getTree", map[string]any{}), &tree)
	if len(tree.Contexts) == 0 {
		t.Fatal("WebDriver BiDi: no browsing context")
	}
	d.context = tree.Contexts[0].Context
	d.call(t, "browsingContext.setViewport", map[string]any{"context": d.context, "viewport": map[string]any{"width": 1400, "height": 1000}})
	d.call(t, "browsingContext.navigate", map[string]any{"context": d.context, "url": pageURL, "wait": "complete"})
	return d
}

func (d *bidi) call(t *testing.T, method string, params any) json.RawMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	d.id++
	msg, _ := json.Marshal(map[string]any{"id": d.id, "method": method, "params": params})
	if err := d.ws.Write(ctx, websocket.MessageText, msg); err != nil {
		t.Fatalf("BiDi %s: %v", method, err)
	}
	for {
		_, b, err := d.ws.Read(ctx)
		if err != nil {
			t.Fatalf("BiDi %s: %v", method, err)
		}
		var r struct {
			Type    string          `json:"type"`
			ID      int             `json:"id"`
			Result  json.RawMessage `json:"result"`
			Error   string          `json:"error"`
			Message string          `json:"message"`
		}
		if json.Unmarshal(b, &r) != nil || r.Type == "event" || r.ID != d.id {
			continue
		}
		if r.Type == "error" {
			t.Fatalf("BiDi %s: %s: %s", method, r.Error, r.Message)
		}
		return r.Result
	}
}

func (d *bidi) eval(t *testing.T, expr string) string {
	t.Helper()
	res := d.call(t, "script.evaluate", map[string]any{"expression": expr, "target": map[string]any{"context": d.context},
		"awaitPromise": true, "resultOwnership": "none"})
	var r struct {
		Type   string `json:"type"`
		Result struct {
			Type  string `json:"type"`
			Value any    `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct{ Text string } `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(res, &r); err != nil {
		t.Fatal(err)
	}
	if r.Type == "exception" {
		t.Fatalf("page: %s: %s", expr, r.ExceptionDetails.Text)
	}
	if s, ok := r.Result.Value.(string); ok {
		return s
	}
	b, _ := json.Marshal(r.Result.Value)
	return string(b)
}

func (d *bidi) screenshotPNG(t *testing.T) []byte {
	t.Helper()
	res := d.call(t, "browsingContext.captureScreenshot", map[string]any{"context": d.context, "origin": "document"})
	var r struct{ Data string }
	json.Unmarshal(res, &r)
	png, err := base64.StdEncoding.DecodeString(r.Data)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	return png
}
