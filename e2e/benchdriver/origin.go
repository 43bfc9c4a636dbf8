package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// The lean origin: the driver run again with -origin-listen, a bare
// net/http server that answers /bytes from one fixed buffer, /healthz with
// two bytes and /upload by discarding the body. It is what curl and wrk
// measure against (tools.go): the demo app's slower path (logging, the
// hashing of uploads) would flatter every ratio to direct.

// originBlock is what /bytes repeats.
var originBlock = sourceBlock[:]

func runOrigin(listen string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "3")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > 16<<30 {
			http.Error(w, "n: 0 to 16 GiB", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		w.Header().Set("Content-Type", "application/octet-stream")
		for n > 0 {
			k, err := w.Write(originBlock[:min(n, int64(len(originBlock)))])
			if err != nil {
				return
			}
			n -= int64(k)
		}
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		json.NewEncoder(w).Encode(map[string]int64{"body_length": n})
	})
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: ioTimeout, IdleTimeout: time.Minute}
	return srv.Serve(ln)
}
