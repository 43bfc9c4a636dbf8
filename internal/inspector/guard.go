package inspector

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// guard lets through only requests that name this page by an address or
// "localhost" in Host (a DNS-rebinding page names its own domain), that
// come from the page itself when they carry an Origin, and, when
// credentials are set, that present them. Actions (POST) must also carry
// the page's token and an Origin.
func (in *Inspector) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hostAllowed(r.Host) {
			http.Error(w, "inspector: refused: Host must be an IP address or localhost (DNS rebinding defence)", http.StatusForbidden)
			return
		}
		origin := r.Header.Get("Origin")
		if origin != "" && origin != "http://"+r.Host && origin != "https://"+r.Host {
			http.Error(w, "inspector: refused: cross-site request (Origin "+origin+")", http.StatusForbidden)
			return
		}
		if in.cfg.Credentials != nil {
			user, pass, ok := r.BasicAuth()
			if !ok || !in.cfg.Credentials(user, pass) {
				w.Header().Set("WWW-Authenticate", `Basic realm="localproxy inspector", charset="UTF-8"`)
				http.Error(w, "inspector: the proxy's credentials are required", http.StatusUnauthorized)
				return
			}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			tok := r.Header.Get("X-Inspector-Token")
			if origin == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(in.token)) != 1 {
				http.Error(w, "inspector: refused: an action needs the page's token and Origin", http.StatusForbidden)
				return
			}
		}
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'")
		w.Header().Set("Referrer-Policy", "no-referrer")
		w.Header().Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// hostAllowed reports whether a Host header names an IP address or
// localhost, with or without a port.
func hostAllowed(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if h == "" {
		return false
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(h)
	return err == nil
}

func newToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// secretHeaders are shown masked unless the page asks for their values.
var secretHeaders = map[string]bool{"authorization": true, "proxy-authorization": true, "cookie": true, "set-cookie": true}

// mask returns value masked when name is a secret header.
func mask(name, value string) string {
	if !secretHeaders[strings.ToLower(name)] {
		return value
	}
	scheme, _, ok := strings.Cut(value, " ")
	if ok && strings.EqualFold(name, "authorization") || ok && strings.EqualFold(name, "proxy-authorization") {
		return scheme + " ••••••"
	}
	return "••••••"
}

func maskAll(h [][2]string) [][2]string {
	out := make([][2]string, len(h))
	for i, kv := range h {
		out[i] = [2]string{kv[0], mask(kv[0], kv[1])}
	}
	return out
}
