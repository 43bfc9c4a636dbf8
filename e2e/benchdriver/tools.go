package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The measurements of issue 19 made with tools other than the driver's
// own Go code, against the lean origin (origin.go): curl downloads (bulk)
// and wrk -t2 -c64 (small requests, with wrk's own latency percentiles).
// A Go load generator on the same two cores takes CPU from the tunnel, and
// the demo app's slower path flatters every ratio; these rows are the
// ones comparable with the figures for other tunnels.

// toolPath is one way curl or wrk reaches the lean origin.
type toolPath struct {
	name, transport string // transport: "" (direct), "QUIC" or "TCP"
	url             string // what the tool fetches (without the path)
	host            string // Host header, if not url's
	proxy           string // forward proxy (curl -x), if any
	connect         bool   // curl -p: CONNECT through proxy
	absolute        string // wrk: request target in absolute form (to proxy)
	procs           [2]*proc
	reverse         bool
}

func (t toolPath) label() string {
	if t.transport == "" {
		return t.name
	}
	return t.transport + ": " + t.name
}

func (l *lab) toolPaths() (direct toolPath, paths []toolPath) {
	origin := "http://" + l.origin
	direct = toolPath{name: "direct", url: origin}
	quic, tcp := [2]*proc{l.localpx, l.coordinator}, [2]*proc{l.localpxTCP, l.coordinator}
	noUI := [2]*proc{l.localpxNoUI, l.coordinator}
	public := "http://" + l.public
	paths = []toolPath{
		{name: "forward absolute-form", transport: "QUIC", url: origin, proxy: l.proxy, absolute: origin, procs: quic},
		{name: "forward CONNECT", transport: "QUIC", url: origin, proxy: l.proxy, connect: true, procs: quic},
		{name: "reverse Host routing", transport: "QUIC", url: public, host: "origin.localhost", procs: quic, reverse: true},
		{name: "reverse --expose-tcp port", transport: "QUIC", url: "http://" + l.originQUICPort, procs: quic, reverse: true},
		{name: "forward absolute-form", transport: "TCP", url: origin, proxy: l.tcpProxy, absolute: origin, procs: tcp},
		{name: "forward CONNECT", transport: "TCP", url: origin, proxy: l.tcpProxy, connect: true, procs: tcp},
		{name: "reverse Host routing", transport: "TCP", url: public, host: "origint.localhost", procs: tcp, reverse: true},
		{name: "reverse --expose-tcp port", transport: "TCP", url: "http://" + l.originTCPPort, procs: tcp, reverse: true},
		{name: noUIPathName, transport: "TCP", url: public, host: "originn.localhost", procs: noUI, reverse: true},
	}
	return direct, paths
}

// noUIPathName is the Host-routing path through the localproxy started
// with --ui=false: the inspector's cost is the difference to the row
// before it.
const noUIPathName = "reverse Host routing, localproxy --ui=false"

// toolRow is one path measured by curl or wrk next to direct in the same
// round.
type toolRow struct {
	path           toolPath
	tunnel, direct toolResult
	cpu            procStat[time.Duration]
	peak           procStat[int64]
	ratios         []float64
}

// toolResult is one curl download (bytes, elapsed) or one wrk load
// (requests, elapsed, p50, p99, errors).
type toolResult struct {
	bytes, requests int64
	elapsed         time.Duration
	p50, p99        time.Duration
	errors          int64
}

func (t toolResult) value() float64 {
	if t.bytes > 0 {
		return mbps(t.bytes, t.elapsed)
	}
	return float64(t.requests) / t.elapsed.Seconds()
}

func (row toolRow) ratio() float64 { return row.tunnel.value() / row.direct.value() }

// benchTools runs curl downloads and wrk loads on every tool path,
// cfg.rounds times, each round starting with the direct measurement.
func benchTools(ctx context.Context, cfg config, l *lab, rep *report) error {
	if _, err := exec.LookPath("curl"); err != nil {
		rep.toolsMissing = append(rep.toolsMissing, "curl")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		rep.toolsMissing = append(rep.toolsMissing, "wrk")
	}
	script := filepath.Join(l.dir, "absolute-form.lua")
	if err := os.WriteFile(script, []byte(fmt.Sprintf("wrk.path = %q\n", "http://"+l.origin+"/healthz")), 0o644); err != nil {
		return err
	}
	direct, paths := l.toolPaths()
	for _, tool := range []struct {
		name string
		run  func(toolPath) (toolResult, error)
		rows *[]toolRow
	}{
		{"curl", func(p toolPath) (toolResult, error) { return curlDownload(ctx, p, cfg.bulk) }, &rep.curl},
		{"wrk", func(p toolPath) (toolResult, error) { return wrkLoad(ctx, p, script, cfg.load) }, &rep.wrk},
	} {
		if strings.Contains(strings.Join(rep.toolsMissing, " "), tool.name) {
			continue
		}
		rounds := make([][]toolRow, len(paths))
		for range cfg.rounds {
			d, err := tool.run(direct)
			if err != nil {
				return err
			}
			for i, p := range paths {
				if tool.name == "wrk" && p.connect || !cfg.runsPath(p.label()) {
					continue // wrk speaks no CONNECT; -only
				}
				row := toolRow{path: p, direct: d}
				_, row.cpu, row.peak, err = measured(p.procs, func() error {
					var err error
					row.tunnel, err = tool.run(p)
					return err
				})
				if err != nil {
					return err
				}
				rounds[i] = append(rounds[i], row)
			}
		}
		for _, rows := range rounds {
			if len(rows) == 0 {
				continue
			}
			row, ratios := median(rows, toolRow.ratio)
			row.ratios = ratios
			*tool.rows = append(*tool.rows, row)
		}
	}
	return nil
}

// curlDownload fetches n bytes of /bytes with curl along p.
func curlDownload(ctx context.Context, p toolPath, n int64) (toolResult, error) {
	args := []string{"-sS", "-o", "/dev/null", "--max-time", "300", "-w", "%{size_download} %{http_code}"}
	if p.proxy != "" {
		args = append(args, "-x", "http://"+p.proxy)
	}
	if p.connect {
		args = append(args, "-p")
	}
	if p.host != "" {
		args = append(args, "-H", "Host: "+p.host)
	}
	args = append(args, p.url+"/bytes?n="+strconv.FormatInt(n, 10))
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, "curl", args...).CombinedOutput()
	elapsed := time.Since(t0)
	if err != nil {
		return toolResult{}, fmt.Errorf("curl %s: %w: %s", p.label(), err, out)
	}
	var got int64
	var code string
	if _, err := fmt.Sscan(string(out), &got, &code); err != nil || got != n || code != "200" {
		return toolResult{}, fmt.Errorf("curl %s: got %q, want %d bytes with 200", p.label(), out, n)
	}
	return toolResult{bytes: n, elapsed: elapsed}, nil
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in ([0-9.]+)(us|ms|s|m)`)
	wrkPercent  = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// wrkLoad runs wrk -t2 -c64 --latency on /healthz along p for dur
// (whole seconds, at least one).
func wrkLoad(ctx context.Context, p toolPath, script string, dur time.Duration) (toolResult, error) {
	secs := max(1, int(dur.Round(time.Second).Seconds()))
	args := []string{"-t2", "-c64", "-d" + strconv.Itoa(secs) + "s", "--latency", "--timeout", "10s"}
	url := p.url + "/healthz"
	if p.absolute != "" {
		args = append(args, "-s", script)
		url = "http://" + p.proxy + "/"
	}
	if p.host != "" {
		args = append(args, "-H", "Host: "+p.host)
	}
	args = append(args, url)
	out, err := exec.CommandContext(ctx, "wrk", args...).CombinedOutput()
	if err != nil {
		return toolResult{}, fmt.Errorf("wrk %s: %w: %s", p.label(), err, out)
	}
	r, err := parseWrk(string(out))
	if err != nil {
		return r, fmt.Errorf("wrk %s: %w:\n%s", p.label(), err, out)
	}
	return r, nil
}

// parseWrk reads wrk --latency's report.
func parseWrk(out string) (toolResult, error) {
	var r toolResult
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		return r, errors.New("no request count")
	}
	r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	r.elapsed = wrkDuration(m[2], m[3])
	for _, m := range wrkPercent.FindAllStringSubmatch(out, -1) {
		d := wrkDuration(m[2], m[3])
		if m[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if m := wrkSocket.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.errors += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		r.errors += n
	}
	if r.requests <= 0 || r.elapsed <= 0 || r.p50 <= 0 || r.p99 <= 0 {
		return r, errors.New("no requests or no latency distribution")
	}
	if r.errors*100 > r.requests {
		return r, fmt.Errorf("%d errors in %d requests", r.errors, r.requests)
	}
	return r, nil
}

func wrkDuration(num, unit string) time.Duration {
	f, _ := strconv.ParseFloat(num, 64)
	scale := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute}[unit]
	return time.Duration(f * float64(scale))
}
