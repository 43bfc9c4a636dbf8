package httpproxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Credentials are the user name and password browsers must present in
// Proxy-Authorization (Basic) when set in Config.ProxyAuth.
type Credentials struct {
	User, Password string
}

// ParseCredentials parses "user:pass" (the password may contain ':').
func ParseCredentials(s string) (Credentials, error) {
	user, pass, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || user == "" || pass == "" {
		return Credentials{}, fmt.Errorf("proxy credentials: want USER:PASSWORD, both non-empty")
	}
	return Credentials{User: user, Password: pass}, nil
}

// proxyAuth checks Proxy-Authorization against one set of credentials.
// It compares hashes in constant time, so neither the time nor its
// dependence on lengths tells an attacker how close a guess was.
type proxyAuth struct {
	user, pass [32]byte
}

func newProxyAuth(c *Credentials) *proxyAuth {
	if c == nil {
		return nil
	}
	return &proxyAuth{user: sha256.Sum256([]byte(c.User)), pass: sha256.Sum256([]byte(c.Password))}
}

// allows reports whether h carries valid Basic proxy credentials.
func (a *proxyAuth) allows(h *head) bool {
	v, _ := h.get("Proxy-Authorization")
	scheme, b64, _ := strings.Cut(strings.TrimSpace(v), " ")
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(b64))
	if !strings.EqualFold(scheme, "Basic") || err != nil {
		raw = nil // still compared, to keep the time flat
	}
	user, pass, _ := strings.Cut(string(raw), ":")
	u, p := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(pass))
	ok := subtle.ConstantTimeCompare(u[:], a.user[:]) & subtle.ConstantTimeCompare(p[:], a.pass[:])
	return ok == 1 && raw != nil
}

// askForCredentials answers 407 with a Basic challenge and closes the
// connection (the request's body, if any, is not read).
func (c *conn) askForCredentials(h *head, start time.Time) {
	const status = http.StatusProxyAuthRequired
	c.e.countStatus(status)
	reason := "this proxy requires a user name and password (Proxy-Authorization: Basic)"
	if _, sent := h.get("Proxy-Authorization"); sent {
		reason = "wrong proxy user name or password"
	}
	body := fmt.Sprintf("%d %s: %s\n", status, http.StatusText(status), reason)
	fmt.Fprintf(c.bw, "HTTP/1.1 %d %s\r\nProxy-Authenticate: Basic realm=\"localproxy\", charset=\"UTF-8\"\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
	c.bw.Flush()
	c.accessLog(start, h.method, h.target, status, 0, 0, "", errProxyAuth)
}
