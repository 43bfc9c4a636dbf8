package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMetricsEndpoints runs the binaries with --metrics-listen and checks
// /healthz and that /metrics counts the sessions a request made.
func TestMetricsEndpoints(t *testing.T) {
	stunPort, quicPort := freeUDPPort(t), freeUDPPort(t)
	proxyPort, appPort := freeTCPPort(t), freeTCPPort(t)
	coordMetrics, proxyMetrics, repMetrics := freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	certs, _ := filepath.Abs(certsDir())
	start(t, nil, "reporter", "--listen", "127.0.0.1:"+strconv.Itoa(stunPort), "--metrics-listen", "127.0.0.1:"+strconv.Itoa(repMetrics))
	start(t, nil, "demoapp", "--listen", "127.0.0.1:"+strconv.Itoa(appPort))
	start(t, nil, "coordinator", "--listen", "127.0.0.1:"+strconv.Itoa(quicPort), "--token", "metrics-token", "--allow-private-targets",
		"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"),
		"--metrics-listen", "127.0.0.1:"+strconv.Itoa(coordMetrics), "--pprof")
	start(t, nil, "localproxy", "--listen", "127.0.0.1:"+strconv.Itoa(proxyPort), "--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort),
		"--reporter", "127.0.0.1:"+strconv.Itoa(stunPort), "--token", "metrics-token", "--ca", filepath.Join(certs, "ca.pem"),
		"--server-name", "localhost", "--metrics-listen", "127.0.0.1:"+strconv.Itoa(proxyMetrics))

	plain := &http.Transport{}
	defer plain.CloseIdleConnections()
	get := func(port int, path string) string {
		resp, err := (&http.Client{Transport: plain, Timeout: 5 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	for _, port := range []int{coordMetrics, proxyMetrics, repMetrics} {
		waitFor(t, "/healthz", func() bool { return get(port, "/healthz") == "ok\n" })
	}

	proxyURL, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", proxyPort))
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	waitFor(t, "a request through the proxy", func() bool {
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d/m", appPort))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	checks := []struct {
		port int
		want string
	}{
		{coordMetrics, "quictunnel_sessions_total"},
		{coordMetrics, "quictunnel_dialback_sessions_total"},
		{coordMetrics, "quictunnel_clients_connected 1"},
		{coordMetrics, `quictunnel_session_setup_seconds_bucket{le="0.00025"}`},
		{coordMetrics, `quictunnel_dialback_seconds_bucket{le="+Inf"}`},
		{proxyMetrics, `quictunnel_session_setup_seconds_bucket{le="10"}`},
		{proxyMetrics, "quictunnel_proxy_requests_total"},
		{proxyMetrics, "quictunnel_coordinator_connected 1"},
		{repMetrics, "quictunnel_stun_requests_total "}, // 1, or 2 with localproxy's filtering probe
		{repMetrics, "quictunnel_stun_kept_alive_clients 1"},
		{repMetrics, "quictunnel_stun_keepalive_refused_total 0\n"},
	}
	for _, c := range checks {
		if body := get(c.port, "/metrics"); !strings.Contains(body, c.want) || strings.Contains(body, c.want+"0\n") {
			t.Errorf("metrics on :%d lack %q", c.port, c.want)
		}
	}
	// Labelled series exist before their first count, so alerts can use them.
	for _, c := range []struct {
		port int
		want string
	}{
		{coordMetrics, `quictunnel_limit_hits_total{limit="sessions_per_client"} 0`},
		{coordMetrics, `quictunnel_target_name_lookups_total{source="cache"} `},
		{proxyMetrics, `quictunnel_limit_hits_total{limit="pending_sessions"} 0`},
	} {
		if !strings.Contains(get(c.port, "/metrics"), c.want) {
			t.Errorf("metrics on :%d lack %q", c.port, c.want)
		}
	}
	waitFor(t, "a counted session", func() bool {
		return !strings.Contains(get(coordMetrics, "/metrics"), "quictunnel_sessions_total 0\n")
	})
	if body := get(coordMetrics, "/debug/pprof/"); !strings.Contains(body, "goroutine") {
		t.Error("--pprof did not serve /debug/pprof/")
	}
}
