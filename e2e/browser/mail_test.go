package browser

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

//go:embed testdata/login.html
var loginHTML string

//go:embed testdata/inbox.html
var inboxHTML string

var (
	loginPage = template.Must(template.New("login").Parse(loginHTML))
	inboxPage = template.Must(template.New("inbox").Parse(inboxHTML))
	// failPage reports a failed step (its reason in .User) and moves on.
	failPage = template.Must(template.New("fail").Parse(`<!doctype html><title>failed</title><script>
fetch("/verdict", {method: "POST", headers: {"Content-Type": "application/json"},
  body: JSON.stringify({run: {{.Run}}, step: {{.Step}}, page: "mail", url: location.href, ok: false, errors: [{{.User}}]})})
  .then((r) => r.json()).then((j) => { if (j.next) location.href = j.next; });
</script>`))
)

// The account the login page signs in with, and the custom header value
// the inbox page sends.
const (
	mailUser     = "alice"
	mailPassword = "correct horse"
	mailClient   = "quictunnel-browser-test/1.0 (+custom header)"
)

// routeMail installs mail.test's handlers.
func (s *site) routeMail() {
	s.mail.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		s.page(w, r, loginPage, "")
	})
	s.mail.HandleFunc("POST /login", s.handleLogin)
	s.mail.HandleFunc("GET /inbox", func(w http.ResponseWriter, r *http.Request) {
		user, ok := s.user(r)
		if !ok {
			// Fail the page at once rather than leave the test waiting.
			w.WriteHeader(http.StatusUnauthorized)
			s.page(w, r, failPage, "no valid session cookie on /inbox after signing in")
			return
		}
		s.page(w, r, inboxPage, user)
	})
	s.mail.HandleFunc("GET /api/messages", s.authed(s.handleMessages))
	s.mail.HandleFunc("GET /api/poll", s.authed(s.handlePoll))
	s.mail.HandleFunc("GET /ws", s.authed(s.handleWS))
	s.mail.HandleFunc("POST /api/upload", s.authed(s.handleUpload))
	s.mail.HandleFunc("/verdict", s.handleVerdict)
}

// page renders a page template with the run parameters and user (or, for
// failPage, the reason).
func (s *site) page(w http.ResponseWriter, r *http.Request, tmpl *template.Template, user string) {
	id, step, err := runParams(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	tmpl.Execute(w, map[string]any{"Run": id, "Step": step, "User": user,
		"LoginUser": mailUser, "Password": mailPassword, "Client": mailClient, "UploadSize": s.cfg.UploadSize, "Pings": s.cfg.WSPings})
}

// handleLogin checks the form, sets a session cookie (HttpOnly, and
// Secure over HTTPS) and a preference cookie (readable by scripts) and
// redirects to the inbox.
func (s *site) handleLogin(w http.ResponseWriter, r *http.Request) {
	if r.PostFormValue("user") != mailUser || r.PostFormValue("password") != mailPassword {
		http.Error(w, "wrong user or password", http.StatusForbidden)
		return
	}
	id, step, err := runParams(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	token := rand.Text()
	s.mu.Lock()
	s.rec.Logins = append(s.rec.Logins, mailUser)
	s.rec.Sessions[token] = mailUser
	s.mu.Unlock()
	secure := r.TLS != nil
	http.SetCookie(w, &http.Cookie{Name: sessionCookie(r), Value: token, Path: "/", HttpOnly: true, Secure: secure, SameSite: http.SameSiteLaxMode})
	// Not Secure, so that the plain-HTTP page may set it again.
	http.SetCookie(w, &http.Cookie{Name: "ui", Value: "compact", Path: "/", SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, pageURL("/inbox", id, step), http.StatusSeeOther)
}

// sessionCookie names the session cookie. Over HTTPS it has the
// __Secure- prefix, as big webmails do; the plain-HTTP one needs another
// name anyway, since browsers do not let an insecure page replace a
// Secure cookie.
func sessionCookie(r *http.Request) string {
	if r.TLS != nil {
		return "__Secure-session"
	}
	return "session"
}

// user returns the signed-in user of the request's session cookie.
func (s *site) user(r *http.Request) (string, bool) {
	c, err := r.Cookie(sessionCookie(r))
	if err != nil {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.rec.Sessions[c.Value]
	return u, ok
}

// authed refuses requests without a valid session cookie.
func (s *site) authed(h func(w http.ResponseWriter, r *http.Request, user string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		user, ok := s.user(r)
		if !ok {
			http.Error(w, "no valid session cookie", http.StatusUnauthorized)
			return
		}
		h(w, r, user)
	}
}

// handleMessages records the custom request headers and echoes them.
func (s *site) handleMessages(w http.ResponseWriter, r *http.Request, user string) {
	h := headerRecord{Scheme: schemeOf(r), Client: r.Header.Get("X-Mail-Client"), RequestID: r.Header.Get("X-Request-Id"), User: user}
	s.mu.Lock()
	s.rec.Headers = append(s.rec.Headers, h)
	s.mu.Unlock()
	writeJSON(w, map[string]any{
		"user": user, "client": h.Client, "requestId": h.RequestID,
		"messages": []map[string]string{{"from": "bob", "subject": "lunch?"}, {"from": "carol", "subject": "minutes"}},
	})
}

// handlePoll holds the request open for PollHold, then answers with an
// event, like a webmail's push channel.
func (s *site) handlePoll(w http.ResponseWriter, r *http.Request, user string) {
	rec := pollRecord{Scheme: schemeOf(r)}
	defer func() {
		s.mu.Lock()
		s.rec.Polls = append(s.rec.Polls, rec)
		s.mu.Unlock()
	}()
	t := time.NewTimer(s.cfg.PollHold)
	defer t.Stop()
	select {
	case <-r.Context().Done():
		return
	case <-t.C:
	}
	writeJSON(w, map[string]any{"event": "new-mail", "for": user, "heldMs": s.cfg.PollHold.Milliseconds()})
	rec.Answered = true
}

// handleWS greets the user, then answers each "ping N" with "pong N".
func (s *site) handleWS(w http.ResponseWriter, r *http.Request, user string) {
	s.wsWG.Add(1)
	defer s.wsWG.Done()
	rec := wsRecord{Scheme: schemeOf(r), Proto: r.Proto, User: user}
	defer func() {
		s.mu.Lock()
		s.rec.WS = append(s.rec.WS, rec)
		s.mu.Unlock()
	}()
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		rec.Err = err.Error()
		return
	}
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(s.ctx, 30*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte("hello "+user)); err != nil {
		rec.Err = err.Error()
		return
	}
	for {
		_, msg, err := c.Read(ctx)
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				rec.Err = err.Error()
			}
			return
		}
		var n int
		if _, err := fmt.Sscanf(string(msg), "ping %d", &n); err != nil {
			rec.Err = fmt.Sprintf("unexpected message %q", msg)
			c.Close(websocket.StatusUnsupportedData, "want ping N")
			return
		}
		if err := c.Write(ctx, websocket.MessageText, []byte("pong "+strconv.Itoa(n))); err != nil {
			rec.Err = err.Error()
			return
		}
		rec.Echoed++
	}
}

// handleUpload reads the "attachment" part of a multipart form, hashes
// it and compares it with the bytes the page must have generated from
// its "seed" field (see uploadBytes).
func (s *site) handleUpload(w http.ResponseWriter, r *http.Request, user string) {
	mr, err := r.MultipartReader()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var seed uint32
	rec := uploadRecord{Scheme: schemeOf(r)}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		switch part.FormName() {
		case "seed":
			b, _ := io.ReadAll(io.LimitReader(part, 32))
			v, err := strconv.ParseUint(string(b), 10, 32)
			if err != nil {
				http.Error(w, "bad seed", http.StatusBadRequest)
				return
			}
			seed = uint32(v)
		case "attachment":
			h := sha256.New()
			if rec.Size, err = io.Copy(h, io.LimitReader(part, 64<<20)); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			rec.SHA256 = hex.EncodeToString(h.Sum(nil))
		}
	}
	want := sha256.Sum256(uploadBytes(seed, int(rec.Size)))
	rec.OK = rec.Size == int64(s.cfg.UploadSize) && rec.SHA256 == hex.EncodeToString(want[:])
	s.mu.Lock()
	s.rec.Uploads = append(s.rec.Uploads, rec)
	s.mu.Unlock()
	writeJSON(w, map[string]any{"size": rec.Size, "sha256": rec.SHA256, "ok": rec.OK})
}

// uploadBytes is the attachment the inbox page builds: n bytes of
// xorshift32 output from seed, little-endian, the same generator as the
// page's script.
func uploadBytes(seed uint32, n int) []byte {
	b := make([]byte, (n+3)/4*4)
	x := seed
	for i := 0; i < len(b); i += 4 {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		binary.LittleEndian.PutUint32(b[i:], x)
	}
	return b[:n]
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}
