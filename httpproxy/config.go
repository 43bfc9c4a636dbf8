package httpproxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"
)

// Dialer opens a byte stream to target ("host:port") for one browser
// connection. A returned *DialError chooses the status the browser sees.
// A Dialer may also return before the target is reached and fail the
// connection's first Read with a *DialError: a request then gets that
// status, a CONNECT (already answered 200) is closed.
type Dialer interface {
	DialTarget(ctx context.Context, target string) (net.Conn, error)
}

// Config configures a Proxy. Zero values select the defaults given.
type Config struct {
	// Dialer reaches targets. Required.
	Dialer Dialer
	// Logger receives diagnostics. Default: discard.
	Logger *slog.Logger
	// AccessLog receives one line per request or tunnel. Default: Logger.
	AccessLog *slog.Logger
	// MaxHeaderBytes bounds a request or response head; a larger request
	// head is answered 431. Default 64 KiB.
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds reading one request head once its first
	// byte arrived (slowloris). Default 30s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a browser connection idle between requests.
	// Default 2m.
	IdleTimeout time.Duration
	// MaxConns bounds the client connections open at once, over all the
	// listeners served: at the bound the proxy stops accepting, so new
	// connections wait in the kernel's listen queue until one closes.
	// Default 0: no bound.
	MaxConns int
	// BodyReadTimeout bounds the wait for each next part of a request
	// body: a client that stops sending mid-body is answered 408, and the
	// exchange is aborted on every hop (the upstream is reset). Default
	// 30s.
	BodyReadTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for a target's response head
	// after the request was sent. Default 0: none (long polls must work).
	ResponseHeaderTimeout time.Duration
	// PAC, if set, is served at /proxy.pac as a proxy auto-config file,
	// without authentication.
	PAC string
	// Status, if set, is served at /status (an origin-form GET to the proxy
	// itself) as application/json, behind ProxyAuth like any request.
	Status func() []byte
	// ProxyAuth, if set, is required of every request and CONNECT in
	// Proxy-Authorization (Basic); others get 407. Default: none.
	ProxyAuth *Credentials
}

// DefaultBodyReadTimeout is Config.BodyReadTimeout's default.
const DefaultBodyReadTimeout = 30 * time.Second

func (c *Config) validate() error {
	switch {
	case c.Dialer == nil:
		return &ConfigError{"Dialer", "required"}
	case c.MaxHeaderBytes < 0:
		return &ConfigError{"MaxHeaderBytes", "must not be negative"}
	case c.MaxConns < 0:
		return &ConfigError{"MaxConns", "must not be negative"}
	case c.ProxyAuth != nil && (c.ProxyAuth.User == "" || c.ProxyAuth.Password == "" || strings.Contains(c.ProxyAuth.User, ":")):
		return &ConfigError{"ProxyAuth", "user (without ':') and password must be non-empty"}
	case c.ReadHeaderTimeout < 0 || c.IdleTimeout < 0 || c.ResponseHeaderTimeout < 0 || c.BodyReadTimeout < 0:
		return &ConfigError{"Timeout", "must not be negative"}
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = 30 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 2 * time.Minute
	}
	if c.BodyReadTimeout == 0 {
		c.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.AccessLog == nil {
		c.AccessLog = c.Logger
	}
}
