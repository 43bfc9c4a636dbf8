package localproxy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"quictunnel/httpproxy"
	"quictunnel/internal/inspector"
	"quictunnel/quictun"
)

// setUpUI sets up the inspector page (see package inspector): on its own
// listener (UIListen), or else on the proxy's address, where uiMux hands
// it the connections whose first request asks for /ui. Beyond loopback
// the page asks for the proxy's credentials, and is not served without.
func (p *Proxy) setUpUI() error {
	if p.cfg.NoUI {
		return nil
	}
	cfg := inspector.Config{History: p.cfg.UIHistory, State: func() any { return p.Status() },
		Throughput: p.sessions.upDown, Logger: p.log}
	if cfg.History < 0 {
		return &ConfigError{"UIHistory", "must not be negative"}
	}
	var (
		ln  net.Listener
		mux *uiMux
		err error
	)
	if p.cfg.UIListen != "" {
		if ln, err = net.Listen("tcp", p.cfg.UIListen); err != nil {
			return fmt.Errorf("inspector: listen %s: %w", p.cfg.UIListen, err)
		}
	} else if !canShareProxyPort {
		p.log.Info("inspector page not served: this system cannot share the proxy's port with it; set --ui-listen")
		return nil
	}
	shared := ln == nil
	if shared && !isLoopbackListener(p.ln) || !shared && !isLoopbackListener(ln) {
		if p.cfg.ProxyAuth == nil {
			if !shared {
				ln.Close()
				return &ConfigError{"UIListen", fmt.Sprintf("%s is reachable from other machines: the inspector page then needs the proxy credentials (--proxy-auth); or listen on 127.0.0.1", ln.Addr())}
			}
			p.log.Warn("inspector page not served: the proxy listens beyond loopback without credentials", "listen", p.ln.Addr())
			return nil
		}
		wu, wp := sha256.Sum256([]byte(p.cfg.ProxyAuth.User)), sha256.Sum256([]byte(p.cfg.ProxyAuth.Password))
		cfg.Credentials = func(user, pass string) bool {
			u, pw := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(pass))
			return subtle.ConstantTimeCompare(u[:], wu[:])&subtle.ConstantTimeCompare(pw[:], wp[:]) == 1
		}
	}
	ins, err := inspector.New(cfg)
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return &ConfigError{"UIHistory", err.Error()}
	}
	if shared {
		mux = newUIMux(p.ln)
		p.ln, ln, p.mux = mux.proxyListener(), mux.uiListener(), mux
	}
	p.ins, p.uiLn = ins, ln
	p.sessions.ins = ins
	return nil
}

// UIAddr returns the address of the inspector page's listener, or nil
// when it is off. (Shared with the proxy unless UIListen is set.)
func (p *Proxy) UIAddr() net.Addr {
	if p.uiLn == nil {
		return nil
	}
	return p.uiLn.Addr()
}

// serveUI serves the inspector page until ctx ends.
func (p *Proxy) serveUI(ctx context.Context) {
	if p.ins == nil {
		return
	}
	srv := &http.Server{Handler: p.ins.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: nil}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { p.ins.Run(ctx) })
	wg.Go(func() {
		if err := srv.Serve(p.uiLn); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			p.log.Warn("inspector page stopped", "err", err)
		}
	})
	p.log.Info("inspector page", "url", "http://"+p.uiLn.Addr().String()+"/ui/")
	<-ctx.Done()
	p.ins.Close()
	srv.Close()
}

// captureApp records the HTTP requests of a reverse session to an exposed
// HTTP app in the inspector.
func (p *Proxy) captureApp(svc quictun.ExposedService, ro quictun.ReverseOpen, app net.Conn) net.Conn {
	if p.ins == nil || svc.Kind != quictun.ServiceHTTP {
		return app
	}
	return p.ins.Capture(app, svc.Name, svc.Local, ro.Remote.String(), ro.Session.String())
}

// publicRequest passes coordinator's record of a public request to the
// inspector.
func (p *Proxy) publicRequest(m *quictun.RequestLog) {
	if p.ins == nil {
		return
	}
	host := ""
	target := m.Target
	if i := strings.IndexByte(target, '/'); i > 0 {
		host, target = target[:i], target[i:]
	}
	p.ins.AddPublic(inspector.Record{Time: time.Now().Add(-m.Duration), Method: m.Method, Host: host, Path: target,
		Status: int(m.Status), Up: int64(m.Up), Down: int64(m.Down), Duration: float64(m.Duration.Microseconds()) / 1000,
		Client: m.Remote.String(), Service: m.Service, TLS: m.TLS, Outcome: m.Outcome}, m.Session.String())
}

// ReportRequest records one browser request relayed over this session
// (httpproxy calls it after an absolute-form request).
func (c *trackedConn) ReportRequest(r httpproxy.RequestRecord) {
	c.reported.Store(true)
	if c.t.ins != nil {
		c.t.ins.Add(requestRecord(r, c.Transport()))
	}
}

// requestRecord is the inspector's row for a browser's absolute-form
// request that went over transport.
func requestRecord(r httpproxy.RequestRecord, transport string) inspector.Record {
	host, path := r.Target, ""
	if rest, ok := strings.CutPrefix(host, "http://"); ok {
		host = rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			host, path = rest[:i], rest[i:]
		}
	}
	return inspector.Record{Time: time.Now().Add(-r.Duration), Kind: inspector.KindProxy, Method: r.Method, Host: host, Path: path,
		Status: r.Status, Up: r.Up, Down: r.Down, Duration: float64(r.Duration.Microseconds()) / 1000, Transport: transport,
		Outcome: r.Outcome, Done: true}
}

// tunnelRecord is the inspector's row for a browser's CONNECT tunnel to
// target over transport, ended now after moving up and down bytes.
func tunnelRecord(target string, start time.Time, up, down int64, transport string) inspector.Record {
	status := 0
	if down > 0 {
		status = 200
	}
	d := time.Since(start)
	return inspector.Record{Time: start, Kind: inspector.KindProxy, Method: "CONNECT", Host: target, Status: status,
		Up: up, Down: down, Duration: float64(d.Microseconds()) / 1000, Transport: transport, Done: true}
}
