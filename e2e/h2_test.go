package e2e

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"quictunnel/internal/demoapp"
)

// TestHTTP2PublicPort runs the real coordinator with --https and
// localproxy exposing two demo apps, one of them also behind basic auth
// and behind an allow-from list that excludes the test, and drives it
// with curl --http2 (nghttp2): HTTP/2 is negotiated, requests are routed
// by :authority, the app gets the forwarding fields, credentials and
// allow-from are enforced, an unknown name gets 404, many requests share
// one connection, large bodies arrive whole both ways, and the access-log
// lines say HTTP/2.0.
func TestHTTP2PublicPort(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed (scripts/test-deps.sh)")
	}
	quicPort, stunPort, proxyPort := freeUDPPort(t), freeUDPPort(t), freeTCPPort(t)
	appPort, twoPort, httpsPort := freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	certs, _ := filepath.Abs(certsDir())
	dir := t.TempDir()
	// curl (OpenSSL) takes no *.localhost: a certificate naming each.
	names := []string{"app", "two", "guarded", "closed", "nosuch"}
	var hosts []string
	for _, name := range names {
		hosts = append(hosts, name+".localhost")
	}
	caFile, certFile, keyFile := writeTestServerCert(t, dir, hosts...)
	start(t, nil, "demoapp", "--listen", "127.0.0.1:"+strconv.Itoa(appPort))
	start(t, nil, "demoapp", "--listen", "127.0.0.1:"+strconv.Itoa(twoPort))
	coord := start(t, nil, "coordinator", "--listen", "127.0.0.1:"+strconv.Itoa(quicPort),
		"--reporter-listen", "127.0.0.1:"+strconv.Itoa(stunPort), "--token", "h2-token",
		"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
		"--https", "127.0.0.1:"+strconv.Itoa(httpsPort), "--https-cert", certFile, "--https-key", keyFile, "--domain", "localhost")
	app := "127.0.0.1:" + strconv.Itoa(appPort)
	lp := start(t, nil, "localproxy", "--listen", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort), "--reporter", "127.0.0.1:"+strconv.Itoa(stunPort),
		"--token", "h2-token", "--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost",
		"--expose", "app="+app, "--expose", "two=127.0.0.1:"+strconv.Itoa(twoPort),
		"--expose", "guarded="+app, "--basic-auth", "guarded=alice:s3cret",
		"--expose", "closed="+app, "--allow-from", "closed=203.0.113.0/24", "--log-public-requests")
	waitFor(t, "the apps published", func() bool { return strings.Count(lp.out.String(), "url=https://") == 4 })

	port := strconv.Itoa(httpsPort)
	// curl runs curl --http2 for the URLs on the HTTPS port, every name
	// resolved to 127.0.0.1, and returns what -w wrote.
	curl := func(t *testing.T, args ...string) string {
		t.Helper()
		base := []string{"-sS", "--http2", "--max-time", "60", "--cacert", caFile}
		for _, name := range names {
			base = append(base, "--resolve", name+".localhost:"+port+":127.0.0.1")
		}
		out, err := exec.CommandContext(t.Context(), "curl", append(base, args...)...).Output()
		if err != nil {
			t.Fatalf("curl %s: %v", strings.Join(args, " "), err)
		}
		return string(out)
	}
	url := func(name, path string) string { return "https://" + name + ".localhost:" + port + path }
	// echo GETs path from name and returns the HTTP version, the status and
	// the body.
	echo := func(t *testing.T, name, path string, args ...string) (version, status, body string) {
		t.Helper()
		out := filepath.Join(dir, "out")
		w := curl(t, append(args, "-o", out, "-w", "%{http_version} %{http_code}", url(name, path))...)
		version, status, _ = strings.Cut(w, " ")
		b, _ := os.ReadFile(out)
		return version, status, string(b)
	}

	t.Run("routing and forwarding fields", func(t *testing.T) {
		for _, tt := range []struct{ name, port string }{{"app", strconv.Itoa(appPort)}, {"two", strconv.Itoa(twoPort)}} {
			v, status, body := echo(t, tt.name, "/who?x=1", "-H", "X-Forwarded-For: 198.51.100.9")
			var e demoapp.Echo
			if err := json.Unmarshal([]byte(body), &e); err != nil || v != "2" || status != "200" {
				t.Fatalf("%s: HTTP/%s %s %q", tt.name, v, status, body)
			}
			if e.Proto != "HTTP/1.1" || !e.HeadersRaw || e.Path != "/who" || e.Query != "x=1" || e.Host != tt.name+".localhost:"+port ||
				!strings.HasPrefix(e.RemoteAddr, "127.0.0.1:") {
				t.Errorf("%s: app saw %+v", tt.name, e)
			}
			if got := e.Header.Get("X-Forwarded-For"); got != "127.0.0.1" {
				t.Errorf("%s: X-Forwarded-For %q (the client's forged one must not pass)", tt.name, got)
			}
			if got, want := e.Header.Get("Forwarded"), `for=127.0.0.1;host="`+tt.name+`.localhost:`+port+`";proto=https`; got != want {
				t.Errorf("%s: Forwarded %q, want %q", tt.name, got, want)
			}
			if e.Header.Get("X-Forwarded-Proto") != "https" {
				t.Errorf("%s: X-Forwarded-Proto %q", tt.name, e.Header.Get("X-Forwarded-Proto"))
			}
		}
	})

	t.Run("refusals", func(t *testing.T) {
		for _, tt := range []struct {
			name, path, status, body string
			args                     []string
		}{
			{"guarded", "/", "401", "401 Unauthorized: this app requires a user name and password", nil},
			{"guarded", "/", "401", "401 Unauthorized: wrong user name or password", []string{"-u", "alice:wrong"}},
			{"guarded", "/ok", "200", `"path": "/ok"`, []string{"-u", "alice:s3cret"}},
			{"closed", "/", "403", "403 Forbidden: closed.localhost:" + port + " is not open to your address 127.0.0.1", nil},
			{"nosuch", "/", "404", "404 Not Found: no app is exposed as nosuch.localhost:" + port, nil},
		} {
			v, status, body := echo(t, tt.name, tt.path, tt.args...)
			if v != "2" || status != tt.status || !strings.Contains(body, tt.body) {
				t.Errorf("%s %v: HTTP/%s %s %q, want %s with %q", tt.name, tt.args, v, status, body, tt.status, tt.body)
			}
		}
	})

	t.Run("concurrent streams on one connection", func(t *testing.T) {
		const n = 40
		args := []string{"--parallel", "--parallel-max", "20", "-w", "%{http_version} %{http_code} %{num_connects}\n"}
		for i := range n {
			args = append(args, "-o", "/dev/null", url("app", fmt.Sprintf("/stream/%d", i)))
		}
		connects := 0
		lines := strings.Split(strings.TrimSpace(curl(t, args...)), "\n")
		for _, line := range lines {
			var v string
			var status, c int
			if _, err := fmt.Sscan(line, &v, &status, &c); err != nil || v != "2" || status != 200 {
				t.Fatalf("transfer: %q", line)
			}
			connects += c
		}
		if len(lines) != n || connects != 1 {
			t.Errorf("%d transfers made %d connections, want %d over one", len(lines), connects, n)
		}
		// coordinator saw them all from one client address.
		waitFor(t, "the access-log lines", func() bool { return strings.Count(coord.out.String(), "/stream/") >= n })
		clients := map[string]bool{}
		for line := range strings.Lines(coord.out.String()) {
			if strings.Contains(line, "/stream/") {
				_, rest, _ := strings.Cut(line, "client=")
				client, _, _ := strings.Cut(rest, " ")
				clients[client] = true
			}
		}
		if len(clients) != 1 {
			t.Errorf("requests came from %d client connections: %v", len(clients), clients)
		}
	})

	t.Run("large upload and download", func(t *testing.T) {
		const size = 24<<20 + 5
		up := make([]byte, size)
		rand.Read(up)
		file := filepath.Join(dir, "upload")
		if err := os.WriteFile(file, up, 0o600); err != nil {
			t.Fatal(err)
		}
		v, status, body := echo(t, "app", "/upload", "--data-binary", "@"+file)
		var e demoapp.Echo
		sum := sha256.Sum256(up)
		if err := json.Unmarshal([]byte(body), &e); err != nil || v != "2" || status != "200" ||
			e.BodyLength != size || e.BodySHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("upload: HTTP/%s %s, app read %d bytes, sha256 %s", v, status, e.BodyLength, e.BodySHA256)
		}
		v, status, body = echo(t, "app", "/bytes?n="+strconv.Itoa(size))
		want := make([]byte, size)
		for i := range want {
			want[i] = demoapp.ByteAt(int64(i))
		}
		if got, wantSum := sha256.Sum256([]byte(body)), sha256.Sum256(want); v != "2" || status != "200" || got != wantSum {
			t.Fatalf("download: HTTP/%s %s, %d bytes, sha256 %x, want %x", v, status, len(body), got, wantSum)
		}
	})

	t.Run("HTTP/1.1 still served", func(t *testing.T) {
		if v, status, _ := echo(t, "app", "/h1", "--http1.1"); v != "1.1" || status != "200" {
			t.Fatalf("HTTP/%s %s", v, status)
		}
	})

	// The access log names the protocol; localproxy's log has the request
	// too (--log-public-requests).
	q := regexp.QuoteMeta
	for _, want := range []string{q(`target="app.localhost:`+port+`/who?x=1" status=200`) + `.* outcome=ok proto=HTTP/2\.0`,
		q(`target=guarded.localhost:`+port+`/ status=401`) + `.* proto=HTTP/2\.0`,
		q(`target=nosuch.localhost:`+port+`/ status=404`) + `.* proto=HTTP/2\.0`,
		q(`target=app.localhost:`+port+`/h1 status=200`) + `.* outcome=ok proto=HTTP/1\.1`} {
		re := regexp.MustCompile(want)
		waitFor(t, "coordinator's line "+want, func() bool { return re.MatchString(coord.out.String()) })
	}
	waitFor(t, "localproxy's line for an HTTP/2 request", func() bool {
		return strings.Contains(lp.out.String(), `target="app.localhost:`+port+`/who?x=1" status=200`)
	})
	// localproxy's inspector captured the request the app got (HTTP/1.1
	// over the tunnel, as before).
	waitFor(t, "the HTTP/2 request in the inspector", func() bool {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(proxyPort) + "/ui/api/requests")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && strings.Contains(string(b), `"/who?x=1"`) && strings.Contains(string(b), `"/upload"`)
	})
}
