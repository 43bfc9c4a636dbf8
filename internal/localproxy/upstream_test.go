package localproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// fakeUpstream answers every CONNECT with status, after checking the
// credentials when it is 200; it returns its address.
func fakeUpstream(t *testing.T, status int, wantAuth string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err == nil && req.Method == http.MethodConnect {
				code := status
				if code == http.StatusOK && req.Header.Get("Proxy-Authorization") != wantAuth {
					code = http.StatusProxyAuthRequired
				}
				fmt.Fprintf(c, "HTTP/1.1 %d %s\r\n\r\n", code, http.StatusText(code))
				if code == http.StatusOK {
					io.WriteString(c, "hello from the other side")
				}
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func TestConnectDialer(t *testing.T) {
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	for _, tc := range []struct {
		name, proxy string
		want        string // in the error; "" for success
	}{
		{"ok", "http://u:p@" + fakeUpstream(t, 200, "Basic dTpw"), ""},
		{"407 without credentials", "http://" + fakeUpstream(t, 407, ""), "wants credentials"},
		{"407 wrong credentials", "http://u:bad@" + fakeUpstream(t, 200, "Basic dTpw"), "refused the credentials given (407"},
		{"403", "http://" + fakeUpstream(t, 403, ""), "forbids CONNECT to 198.51.100.1:443 (403"},
		{"unreachable", "http://" + deadAddr, "unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := upstreamProxy(tc.proxy, false, "")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			c, err := connectDialer(u)(ctx, "198.51.100.1:443")
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(c)
				c.Close()
				if string(b) != "hello from the other side" {
					t.Fatalf("read %q through the tunnel", b)
				}
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if !errors.Is(err, ErrUpstreamProxy) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), u.Host) {
				t.Fatalf("error %q: want ErrUpstreamProxy naming %s and saying %q", err, u.Host, tc.want)
			}
			if strings.Contains(err.Error(), ":bad@") {
				t.Errorf("error shows the password: %q", err)
			}
		})
	}
}

func TestUpstreamProxyConfig(t *testing.T) {
	for _, raw := range []string{"socks5://h:1", "http://h", "://"} {
		if _, err := upstreamProxy(raw, false, "c:443"); err == nil {
			t.Errorf("upstreamProxy(%q) accepted", raw)
		}
	}
	if u, err := upstreamProxy("", false, "c:443"); u != nil || err != nil {
		t.Errorf("no proxy: %v, %v", u, err)
	}
	if u, _ := upstreamProxy("http://a:b@h:3128", false, "c:443"); u == nil || u.Redacted() != (&url.URL{Scheme: "http", User: url.UserPassword("a", "b"), Host: "h:3128"}).Redacted() {
		t.Errorf("parsed %v", u)
	}
}
