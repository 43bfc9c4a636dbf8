package browser

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"html/template"
	"math"
	"net/http"
	"time"
)

//go:embed testdata/video.html
var videoHTML string

var videoPage = template.Must(template.New("video").Parse(videoHTML))

// WAV parameters: 16-bit mono PCM at 22.05 kHz, 44 kB a second, so a few
// minutes is tens of megabytes: more than a browser buffers ahead, so a
// seek needs a new range request.
const (
	wavRate = 22050
	wavBits = 16
)

// routeVideo installs video.test's handlers.
func (s *site) routeVideo() {
	s.video.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		id, step, err := runParams(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		videoPage.Execute(w, map[string]any{"Run": id, "Step": step})
	})
	s.video.HandleFunc("GET /media.wav", s.handleMedia)
	s.video.HandleFunc("/verdict", s.handleVerdict)
}

// handleMedia serves the media file with Range support and records each
// request's range, status and bytes sent.
func (s *site) handleMedia(w http.ResponseWriter, r *http.Request) {
	cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
	w.Header().Set("Content-Type", "audio/wav")
	w.Header().Set("Cache-Control", "no-store")
	http.ServeContent(cw, r, "media.wav", time.Time{}, bytes.NewReader(s.media))
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

// makeWAV returns a WAV file of a tone rising in pitch, seconds long.
// Browsers play PCM WAV in a <video> element (there is no picture, but
// the media pipeline, buffering, range requests and seeking are the same
// as for a film), and it needs no encoder.
func makeWAV(seconds int) []byte {
	samples := wavRate * seconds
	dataLen := samples * wavBits / 8
	var b bytes.Buffer
	b.Grow(44 + dataLen)
	le := binary.LittleEndian
	b.WriteString("RIFF")
	b.Write(le.AppendUint32(nil, uint32(36+dataLen)))
	b.WriteString("WAVEfmt ")
	b.Write(le.AppendUint32(nil, 16))                // fmt chunk size
	b.Write(le.AppendUint16(nil, 1))                 // PCM
	b.Write(le.AppendUint16(nil, 1))                 // mono
	b.Write(le.AppendUint32(nil, wavRate))           // sample rate
	b.Write(le.AppendUint32(nil, wavRate*wavBits/8)) // byte rate
	b.Write(le.AppendUint16(nil, wavBits/8))         // block align
	b.Write(le.AppendUint16(nil, wavBits))           // bits per sample
	b.WriteString("data")
	b.Write(le.AppendUint32(nil, uint32(dataLen)))
	var phase float64
	sample := make([]byte, 2)
	for i := range samples {
		freq := 220 + 440*float64(i)/float64(samples)
		phase += 2 * math.Pi * freq / wavRate
		le.PutUint16(sample, uint16(int16(4000*math.Sin(phase))))
		b.Write(sample)
	}
	return b.Bytes()
}
