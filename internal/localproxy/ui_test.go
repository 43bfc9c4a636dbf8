package localproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"quictunnel/httpproxy"
)

func TestIsUIRequest(t *testing.T) {
	for _, tt := range []struct {
		first string
		want  bool
	}{
		{"GET /ui/ HTTP/1.1\r\n", true},
		{"GET /ui HTTP/1.1", true},
		{"GET /ui?x HTTP/1.1", true},
		{"POST /ui/api/replay HT", true},
		{"HEAD /ui/ HTTP/1.1", true},
		{"GET /uix HTTP/1.1", false},
		{"GET /status HTTP/1.1", false},
		{"GET http://example.test/ui/ HTTP/1.1", false},
		{"CONNECT /ui/ HTTP/1.1", false},
		{"GET /u", false},
		{"", false},
		{"\x16\x03\x01\x02\x00", false},
	} {
		if got := isUIRequest([]byte(tt.first)); got != tt.want {
			t.Errorf("isUIRequest(%q) = %v, want %v", tt.first, got, tt.want)
		}
	}
}

func FuzzIsUIRequest(f *testing.F) {
	f.Add([]byte("GET /ui/ HTTP/1.1"))
	f.Add([]byte("GET http://a/ui/ HTTP/1.1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := isUIRequest(b)
		s := string(b)
		want := false
		for _, m := range []string{"GET /ui", "HEAD /ui", "POST /ui"} {
			if rest, ok := strings.CutPrefix(s, m); ok && rest != "" && strings.ContainsRune("/ ?", rune(rest[0])) {
				want = true
			}
		}
		if got != want {
			t.Fatalf("isUIRequest(%q) = %v, want %v", b, got, want)
		}
	})
}

// runProxy starts a localproxy whose coordinator is nowhere (127.0.0.1:1):
// its listeners serve all the same.
func runProxy(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	cfg.UDPListen, cfg.Coordinator, cfg.Token = "127.0.0.1:0", "127.0.0.1:1", "t"
	cfg.STUNTimeout, cfg.IdleRestart = 50*time.Millisecond, -1
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return p
}

func httpGet(t *testing.T, client *http.Client, u string, user, pass string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	// New has bound the listeners: Run serves what waits in them.
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The page shares the proxy's port: /ui/ is the page, everything else
// (here /status and a proxied request) is the proxy's. --ui=false leaves
// /ui/ to the proxy.
func TestUISharesTheProxyPort(t *testing.T) {
	for _, noUI := range []bool{false, true} {
		p := runProxy(t, Config{NoUI: noUI})
		base := "http://" + p.Addr().String()
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		st, body := httpGet(t, client, base+"/ui/", "", "")
		if page := st == 200 && strings.Contains(body, "localproxy inspector"); page == noUI {
			t.Errorf("NoUI %v: /ui/ answered %d %.80q", noUI, st, body)
		}
		if st, body := httpGet(t, client, base+"/status", "", ""); st != 200 || !strings.Contains(body, `"coordinator"`) {
			t.Errorf("NoUI %v: /status answered %d %.80q", noUI, st, body)
		}
		// A browser's proxied request still reaches the proxy (which
		// answers 502: nothing listens on localhost port 1).
		pu, _ := url.Parse(base)
		proxied := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(pu), DisableKeepAlives: true}}
		if st, _ := httpGet(t, proxied, "http://localhost:1/ui/", "", ""); st != http.StatusBadGateway {
			t.Errorf("NoUI %v: a proxied request for /ui/ got %d, want the proxy's 502", noUI, st)
		}
		if (p.UIAddr() == nil) != noUI {
			t.Errorf("NoUI %v: UIAddr %v", noUI, p.UIAddr())
		}
	}
}

// Beyond loopback the page needs the proxy's credentials: refused at New
// without them, asked for with them.
func TestUIBeyondLoopback(t *testing.T) {
	_, err := New(Config{Listen: "127.0.0.1:0", UDPListen: "127.0.0.1:0", Coordinator: "127.0.0.1:1", Token: "t", UIListen: "0.0.0.0:0"})
	if ce, ok := errors.AsType[*ConfigError](err); !ok || ce.Field != "UIListen" || !strings.Contains(err.Error(), "--proxy-auth") {
		t.Fatalf("New = %v, want a UIListen error naming --proxy-auth", err)
	}
	p := runProxy(t, Config{UIListen: "0.0.0.0:0", ProxyAuth: &httpproxy.Credentials{User: "me", Password: "pw"}})
	_, port, _ := net.SplitHostPort(p.UIAddr().String())
	client := &http.Client{Timeout: 5 * time.Second}
	for _, tt := range []struct {
		user, pass string
		want       int
	}{{"", "", 401}, {"me", "wrong", 401}, {"me", "pw", 200}} {
		if st, _ := httpGet(t, client, "http://127.0.0.1:"+port+"/ui/api/state", tt.user, tt.pass); st != tt.want {
			t.Errorf("%q:%q: status %d, want %d", tt.user, tt.pass, st, tt.want)
		}
	}
}
