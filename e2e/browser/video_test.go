package browser

import (
	"bytes"
	_ "embed"
	"html/template"
	"net/http"
	"time"
)

//go:embed testdata/video.html
var videoHTML string

var videoPage = template.Must(template.New("video").Parse(videoHTML))

// routeVideo installs video.test's handlers.
func (s *site) routeVideo() {
	s.video.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		s.page(w, r, videoPage, "")
	})
	s.video.HandleFunc("GET /film.webm", s.handleMedia)
	s.video.HandleFunc("/verdict", s.handleVerdict)
}

// handleMedia serves the media file with Range support and records each
// request's range, status and bytes sent.
func (s *site) handleMedia(w http.ResponseWriter, r *http.Request) {
	cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
	w.Header().Set("Content-Type", "video/webm")
	w.Header().Set("Cache-Control", "no-store")
	http.ServeContent(cw, r, "film.webm", time.Time{}, bytes.NewReader(s.cfg.Media))
	s.mu.Lock()
	s.rec.Ranges = append(s.rec.Ranges, rangeRecord{Scheme: schemeOf(r), Range: r.Header.Get("Range"), Status: cw.status, Sent: cw.n})
	s.mu.Unlock()
}

// countingWriter records the status and body bytes of a response.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}
