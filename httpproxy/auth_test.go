package httpproxy

import (
	"bufio"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// TestProxyAuth checks that with ProxyAuth every request and CONNECT
// needs the right Basic credentials, that a refusal is a 407 with a
// challenge that dials nothing, that /proxy.pac needs none, and that the
// credentials never reach the target.
func TestProxyAuth(t *testing.T) {
	var seen []string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Header.Get("Proxy-Authorization"))
		w.Write([]byte("hello"))
	}))
	defer target.Close()
	host := target.Listener.Addr().String()
	d := &directDialer{}
	_, proxy := startProxy(t, Config{Dialer: d, PAC: "function FindProxyForURL(u, h) { return \"DIRECT\"; }",
		ProxyAuth: &Credentials{User: "alice", Password: "s3cret:with:colons"}})

	tests := []struct {
		name, method, target, auth string
		status                     int
	}{
		{"GET without credentials", "GET", "http://" + host + "/", "", 407},
		{"GET wrong password", "GET", "http://" + host + "/", basic("alice", "guess"), 407},
		{"GET wrong user", "GET", "http://" + host + "/", basic("bob", "s3cret:with:colons"), 407},
		{"GET password prefix", "GET", "http://" + host + "/", basic("alice", "s3cret"), 407},
		{"GET other scheme", "GET", "http://" + host + "/", "Bearer " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret:with:colons")), 407},
		{"GET bad base64", "GET", "http://" + host + "/", "Basic !!!", 407},
		{"CONNECT without credentials", "CONNECT", host, "", 407},
		{"CONNECT wrong password", "CONNECT", host, basic("alice", "nope"), 407},
		{"PAC without credentials", "GET", "/proxy.pac", "", 200},
		{"GET with credentials", "GET", "http://" + host + "/", basic("alice", "s3cret:with:colons"), 200},
		{"GET scheme case-insensitive", "GET", "http://" + host + "/", strings.Replace(basic("alice", "s3cret:with:colons"), "Basic", "basic", 1), 200},
		{"CONNECT with credentials", "CONNECT", host, basic("alice", "s3cret:with:colons"), 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := d.dials.Load()
			req := tt.method + " " + tt.target + " HTTP/1.1\r\nHost: " + host + "\r\n"
			if tt.auth != "" {
				req += "Proxy-Authorization: " + tt.auth + "\r\n"
			}
			resp, body := authExchange(t, proxy, tt.method, req+"\r\n")
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d %q, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.status != 407 {
				return
			}
			if got := resp.Header.Get("Proxy-Authenticate"); !strings.HasPrefix(got, "Basic realm=") {
				t.Errorf("Proxy-Authenticate %q, want a Basic challenge", got)
			}
			if d.dials.Load() != before {
				t.Errorf("a refused request dialed its target")
			}
		})
	}
	if len(seen) != 2 || seen[0] != "" || seen[1] != "" {
		t.Errorf("target saw Proxy-Authorization %q, want two requests without it", seen)
	}
}

// authExchange is rawExchange that also reads the answer to a CONNECT
// (which has no body).
func authExchange(t *testing.T, proxy, method, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, req)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	if method == "CONNECT" && resp.StatusCode == http.StatusOK {
		resp.Body.Close() // the tunnel: nothing to read
		return resp, ""
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func TestProxyAuthConfig(t *testing.T) {
	tests := []struct {
		in      string
		want    Credentials
		wantErr bool
	}{
		{in: "alice:pw", want: Credentials{"alice", "pw"}},
		{in: "alice:p:w\n", want: Credentials{"alice", "p:w"}},
		{in: "alice", wantErr: true},
		{in: ":pw", wantErr: true},
		{in: "alice:", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseCredentials(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseCredentials(%q) = %+v, %v", tt.in, got, err)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("error %q repeats the secret", err)
		}
	}
	_, err := New(Config{Dialer: &directDialer{}, ProxyAuth: &Credentials{User: "a"}})
	if ce, ok := errors.AsType[*ConfigError](err); !ok || ce.Field != "ProxyAuth" {
		t.Errorf("empty password: %v, want ConfigError for ProxyAuth", err)
	}
}
