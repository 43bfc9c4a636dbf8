package e2e

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// signalAndWait sends sig to p and returns how it exited; the exit is
// kept for the cleanup start registered, which then checks it too.
func (p *process) signalAndWait(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit 30s after %v:\n%s", sig, p.out)
		return nil
	}
}

// halfwayTarget serves size bytes: the first half at once, the rest when
// release is closed, so a test can act while a transfer is in progress.
func halfwayTarget(t *testing.T, size int) (addr string, started <-chan struct{}, release chan<- struct{}, sum [32]byte) {
	body := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	sum = sha256.Sum256(body)
	st, rel := make(chan struct{}, 1), make(chan struct{})
	srv := startTarget(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		st <- struct{}{}
		select {
		case <-rel:
		case <-r.Context().Done():
			return
		}
		w.Write(body[len(body)/2:])
	}))
	return srv.Listener.Addr().String(), st, rel, sum
}

// TestGracefulShutdown sends SIGTERM to coordinator, to localproxy, then
// to a dial-back worker, while a download is half done: the download
// completes intact, a new request in the meantime is turned away (or, for
// the worker, served by coordinator itself), and each process exits 0.
func TestGracefulShutdown(t *testing.T) {
	for _, victim := range []string{"coordinator", "localproxy", "worker"} {
		t.Run(victim, func(t *testing.T) {
			quicPort, stunPort, proxyPort := freeUDPPort(t), freeUDPPort(t), freeTCPPort(t)
			certs, _ := filepath.Abs(certsDir())
			coord := start(t, nil, "coordinator", "--listen", "127.0.0.1:"+strconv.Itoa(quicPort),
				"--reporter-listen", "127.0.0.1:"+strconv.Itoa(stunPort),
				"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
				"--token", "drain-token", "--allow-private-targets", "--shutdown-timeout", "60s", "--worker-token", "drain-worker-token")
			var worker *process
			if victim == "worker" {
				worker = start(t, nil, "coordinator", "--role", "dialback", "--listen", "127.0.0.1:"+strconv.Itoa(freeUDPPort(t)),
					"--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort), "--worker-token", "drain-worker-token",
					"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
					"--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost", "--allow-private-targets", "--shutdown-timeout", "60s")
				waitFor(t, "the worker connected", func() bool { return strings.Contains(coord.out.String(), "dial-back worker connected") })
			}
			lp := start(t, nil, "localproxy", "--listen", "127.0.0.1:"+strconv.Itoa(proxyPort),
				"--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort), "--reporter", "127.0.0.1:"+strconv.Itoa(stunPort),
				"--token", "drain-token", "--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost",
				"--shutdown-timeout", "60s")
			proc := map[string]*process{"coordinator": coord, "localproxy": lp, "worker": worker}[victim]

			target, started, release, want := halfwayTarget(t, 8<<20)
			proxyURL, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(proxyPort))
			tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
			waitFor(t, "localproxy connected", func() bool {
				return strings.Contains(lp.out.String(), "localproxy ready") && strings.Contains(coord.out.String(), "client connected")
			})

			type result struct {
				sum [32]byte
				n   int
				err error
			}
			done := make(chan result, 1)
			go func() {
				resp, err := client.Get("http://" + target + "/big")
				if err != nil {
					done <- result{err: err}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				done <- result{sha256.Sum256(b), len(b), err}
			}()
			select {
			case <-started:
			case r := <-done:
				t.Fatalf("download ended before it was half done: %+v", r)
			case <-time.After(30 * time.Second):
				t.Fatal("download did not start")
			}

			exited := make(chan error, 1)
			go func() { exited <- proc.signalAndWait(t, syscall.SIGTERM) }()
			waitFor(t, victim+" draining", func() bool { return strings.Contains(proc.out.String(), "draining") })

			// A new request is turned away meanwhile, or served by
			// coordinator itself when a worker drains.
			switch victim {
			case "worker":
				waitFor(t, "coordinator to see the worker draining", func() bool {
					return strings.Contains(coord.out.String(), "dial-back worker draining")
				})
				other := startTarget(t, "127.0.0.1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "new") }))
				resp, err := client.Get(other.URL + "/new")
				if err != nil {
					t.Fatalf("new request while the worker drains: %v", err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(body) != "new" {
					t.Errorf("new request while the worker drains: %d %q, want 200", resp.StatusCode, body)
				}
				if n := strings.Count(coord.out.String(), "via worker"); n != 1 {
					t.Errorf("%d sessions went via the worker, want 1 (the download):\n%s", n, coord.out)
				}
			case "coordinator":
				resp, err := client.Get("http://" + target + "/new")
				if err != nil {
					t.Fatalf("new request while coordinator drains: %v, want a 503", err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "shutting down") {
					t.Errorf("new request while coordinator drains: %d %q, want 503 shutting down", resp.StatusCode, body)
				}
			case "localproxy":
				resp, err := client.Get("http://" + target + "/new")
				if err == nil {
					resp.Body.Close()
					t.Errorf("new request while localproxy drains: %d, want the connection refused", resp.StatusCode)
				} else if !strings.Contains(err.Error(), "refused") {
					t.Errorf("new request while localproxy drains: %v, want connection refused", err)
				}
			}

			close(release)
			r := <-done
			if r.err != nil || r.n != 8<<20 || r.sum != want {
				t.Fatalf("download during shutdown: %d bytes, err %v, sha256 match %v", r.n, r.err, r.sum == want)
			}
			if err := <-exited; err != nil {
				t.Fatalf("%s exited with %v after SIGTERM:\n%s", victim, err, proc.out)
			}
			if !strings.Contains(proc.out.String(), "drained") {
				t.Errorf("%s did not log that it drained:\n%s", victim, proc.out)
			}
		})
	}
}
