package localproxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"quictunnel/quictun"
)

// ErrUpstreamProxy is why the TCP transport could not get through the
// upstream (corporate) HTTP proxy: it was unreachable, refused the
// credentials (407) or the destination (403), or answered otherwise.
var ErrUpstreamProxy = errors.New("upstream proxy")

// CheckTransport checks a transport name and an upstream proxy URL (""
// for none) as New would, without the environment.
func CheckTransport(transport, upstream string) error {
	switch transport {
	case quictun.TransportQUIC, quictun.TransportTCP, quictun.TransportAuto:
	default:
		return &ConfigError{"Transport", fmt.Sprintf("%q: want auto, quic or tcp", transport)}
	}
	_, err := upstreamProxy(upstream, false, "")
	return err
}

// upstreamProxy returns the HTTP proxy the TCP transport reaches
// coordinatorTCP through: raw (http://[user:pass@]host:port) if set, else
// with fromEnv $HTTPS_PROXY minding $NO_PROXY; nil for none.
func upstreamProxy(raw string, fromEnv bool, coordinatorTCP string) (*url.URL, error) {
	if raw == "" {
		if !fromEnv {
			return nil, nil
		}
		// As net/http reads them: once per process.
		u, err := http.ProxyFromEnvironment(&http.Request{URL: &url.URL{Scheme: "https", Host: coordinatorTCP}})
		if err != nil {
			return nil, &ConfigError{"UpstreamProxy", fmt.Sprintf("$HTTPS_PROXY: %v", err)}
		}
		if u == nil {
			return nil, nil
		}
		raw = u.String()
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, &ConfigError{"UpstreamProxy", fmt.Sprintf("want http://[USER:PASSWORD@]HOST:PORT: %v", err)}
	case u.Scheme != "http":
		return nil, &ConfigError{"UpstreamProxy", fmt.Sprintf("scheme %q: only http:// proxies are supported", u.Scheme)}
	case u.Port() == "":
		return nil, &ConfigError{"UpstreamProxy", "want http://[USER:PASSWORD@]HOST:PORT: no port"}
	}
	return u, nil
}

// connectDialer dials addr through the HTTP proxy with CONNECT, with
// Basic authentication when the proxy URL has a user.
func connectDialer(proxy *url.URL) func(ctx context.Context, addr string) (net.Conn, error) {
	name := proxy.Redacted()
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", proxy.Host)
		if err != nil {
			return nil, fmt.Errorf("%w %s unreachable: %w", ErrUpstreamProxy, name, err)
		}
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		req := "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n"
		if u := proxy.User; u != nil {
			pass, _ := u.Password()
			req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(u.Username()+":"+pass)) + "\r\n"
		}
		if _, err := c.Write([]byte(req + "\r\n")); err != nil {
			c.Close()
			return nil, fmt.Errorf("%w %s: send CONNECT: %w", ErrUpstreamProxy, name, err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("%w %s: read its answer to CONNECT %s: %w", ErrUpstreamProxy, name, addr, err)
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusProxyAuthRequired, http.StatusUnauthorized: // some proxies answer 401
			c.Close()
			why := "wants credentials: give them in --upstream-proxy http://USER:PASSWORD@HOST:PORT"
			if proxy.User != nil {
				why = "refused the credentials given"
			}
			return nil, fmt.Errorf("%w %s %s (%s)", ErrUpstreamProxy, name, why, resp.Status)
		case http.StatusForbidden:
			c.Close()
			return nil, fmt.Errorf("%w %s forbids CONNECT to %s (403 Forbidden): ask its administrator to allow that port", ErrUpstreamProxy, name, addr)
		default:
			c.Close()
			return nil, fmt.Errorf("%w %s answered CONNECT %s with %s", ErrUpstreamProxy, name, addr, resp.Status)
		}
		c.SetDeadline(time.Time{})
		if br.Buffered() > 0 { // coordinator's first bytes came with the answer
			return &bufferedConn{Conn: c, r: br}, nil
		}
		return c, nil
	}
}

// bufferedConn is a connection whose first bytes were read ahead.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(b []byte) (int, error) { return c.r.Read(b) }
