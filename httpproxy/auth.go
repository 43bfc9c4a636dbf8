package httpproxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
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

// BasicAuth checks HTTP Basic credentials against one user name and
// password, known only by their SHA-256. It compares hashes in constant
// time, so neither the time nor its dependence on lengths tells an
// attacker how close a guess was.
type BasicAuth struct {
	user, pass [32]byte
}

// NewBasicAuth returns the check for c, or nil for nil.
func NewBasicAuth(c *Credentials) *BasicAuth {
	if c == nil {
		return nil
	}
	return &BasicAuth{user: sha256.Sum256([]byte(c.User)), pass: sha256.Sum256([]byte(c.Password))}
}

// BasicAuthFromHashes returns the check for the credentials whose
// SHA-256 hashes are user and pass.
func BasicAuthFromHashes(user, pass [32]byte) *BasicAuth {
	return &BasicAuth{user: user, pass: pass}
}

// allows reports whether h's field (Authorization or
// Proxy-Authorization) carries the right Basic credentials.
func (a *BasicAuth) allows(h *head, field string) bool {
	v, _ := h.get(field)
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
	reason := "this proxy requires a user name and password (Proxy-Authorization: Basic)"
	if _, sent := h.get("Proxy-Authorization"); sent {
		reason = "wrong proxy user name or password"
	}
	c.challenge(http.StatusProxyAuthRequired, "Proxy-Authenticate", "localproxy", reason)
	c.accessLog(start, h.method, h.target, 0, 0, "", errProxyAuth)
}

// errAppAuth is the access-log outcome of a request to an exposed app
// refused with 401.
var errAppAuth = errors.New("authentication required")

// askForAppCredentials answers 401 with a Basic challenge for realm and
// closes the connection.
func (c *conn) askForAppCredentials(h *head, target, realm string, start time.Time) {
	reason := "this app requires a user name and password"
	if _, sent := h.get("Authorization"); sent {
		reason = "wrong user name or password"
	}
	c.challenge(http.StatusUnauthorized, "WWW-Authenticate", realm, reason)
	c.accessLog(start, h.method, target, 0, 0, "", errAppAuth)
}

// challenge writes a Basic challenge answer in field and marks the
// connection for closing.
func (c *conn) challenge(status int, field, realm, reason string) {
	var line [64]byte
	c.bw.Write(c.appendStatusLine(line[:0], status, http.StatusText(status)))
	body := fmt.Sprintf("%d %s: %s\n", status, http.StatusText(status), reason)
	fmt.Fprintf(c.bw, "%s: Basic realm=%q, charset=\"UTF-8\"\r\n"+
		"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		field, realm, len(body), body)
	c.bw.Flush()
}
