package main

import (
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// report collects every figure of one run.
type report struct {
	cfg          config
	started      time.Time
	elapsed      time.Duration
	loadavg      []byte
	mem          *memResult
	setup        *setupResult
	bulk         []bulkRow
	small        []smallRow
	smallPeak    procStat[int64] // highest peak RSS of every small-request round
	profileSecs  int
	profileMoved int64
	cpuTop       procStat[string]
	cpuCum       procStat[string]
	// Issue 19: curl and wrk against the lean origin (tools.go), and the
	// profile of the TCP transport.
	curl, wrk            []toolRow
	toolsMissing         []string
	tcpProfileMoved      int64
	tcpCPUTop, tcpCPUCum procStat[string]
	// Issue 20: a public request on a cluster node whose client is on
	// another (cluster.go).
	cluster *clusterResult
}

var procNames = [2]string{"localproxy", "coordinator"}

const (
	mib = 1 << 20
	gib = 1 << 30
)

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d.Microseconds())/1000) }

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// rounds lists every round's ratio.
func rounds(ratios []float64) string {
	s := make([]string, len(ratios))
	for i, x := range ratios {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, ", ")
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// cpuPerGiB is CPU seconds per GiB moved.
func cpuPerGiB(cpu time.Duration, bytes int64) float64 {
	return cpu.Seconds() / (float64(bytes) / gib)
}

func (r *report) markdown(notes string) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	kernel, _ := exec.Command("uname", "-r").Output()
	p("# Benchmarks")
	p("")
	p("Made by `make bench` (e2e/benchdriver) on %s in %s: %d cores, %s, Linux %s, %s; load average at the start %s.",
		r.started.Format("2006-01-02"), r.elapsed.Round(time.Second), runtime.NumCPU(), runtime.GOARCH,
		strings.TrimSpace(string(kernel)), runtime.Version(), strings.Join(strings.Fields(string(r.loadavg))[:3], " "))
	p("The real binaries (bin/demoapp, bin/coordinator, bin/localproxy, default settings, info-level logs to a file)")
	p("run on loopback with the driver; all share the same cores. Every localproxy runs as a user's does by default,")
	p("with the inspector page on (it captures the exposed apps' HTTP traffic); one more, on the TCP transport with")
	p("`--ui=false`, gives the inspector's cost. A second localproxy with `--fast-open` is used by the")
	p("set-up benchmark only. Every tunnel figure is next to the same measurement")
	p("made directly (driver → demoapp) just before it; ratio = through the tunnel / direct. CPU is user+sys from")
	p("/proc/PID/stat of each tunnel process, peak RSS is VmHWM (reset before each measurement).")
	p("")
	r.targets(p)
	r.bulkTable(p)
	r.smallTable(p)
	r.clusterTable(p)
	r.toolTables(p)
	r.setupTable(p)
	r.memTable(p)
	r.profiles(p)
	p("")
	p(notesMarker)
	p("")
	b.WriteString(notes)
	return b.String()
}

type printer func(format string, args ...any)

func (r *report) targets(p printer) {
	p("## Targets (issue 6)")
	p("")
	p("Bulk and small-request figures are each path's median of %d rounds (a round is a direct measurement and the", r.cfg.rounds)
	p("same one through the tunnel right after it; the median is taken by ratio); peak RSS is the highest of all rounds.")
	p("")
	p("| target | measured | |")
	p("|---|---|---|")
	worstRatio := func(prefix string) (float64, string) {
		w, what := 1e9, ""
		for _, row := range r.bulk {
			if strings.HasPrefix(row.route, prefix) && !row.reference {
				if x := row.direct.Seconds() / row.tunnel.Seconds(); x < w {
					w, what = x, row.route+" "+row.dir
				}
			}
		}
		return w, what
	}
	if w, what := worstRatio("reverse"); what != "" {
		p("| reverse bulk ≥ 0.12× direct | %.3f× (lowest: %s) | %s |", w, what, verdict(w >= 0.12))
	}
	if w, what := worstRatio("forward"); what != "" {
		p("| forward bulk (absolute-form and CONNECT) ≥ 0.15× | %.3f× (lowest: %s) | %s |", w, what, verdict(w >= 0.15))
	}
	for _, row := range r.small {
		if row.reference {
			continue
		}
		x := row.tunnel.rate() / row.direct.rate()
		want := 0.15
		if strings.HasPrefix(row.route, "reverse") {
			want = 0.35
		}
		p("| %s req/s ≥ %.2f× | %.3f× | %s |", row.route, want, x, verdict(x >= want))
		if strings.HasPrefix(row.route, "reverse") {
			q := row.tunnel.p99.Seconds() / row.direct.p99.Seconds()
			p("| reverse p99 ≤ 2× direct p99 | %.2f× (%s vs %s ms) | %s |", q, ms(row.tunnel.p99), ms(row.direct.p99), verdict(q <= 2))
		}
	}
	worstCPU, what := 0.0, ""
	for _, row := range r.bulk {
		if c := cpuPerGiB(row.cpu[0]+row.cpu[1], row.bytes); c > worstCPU && !row.reference {
			worstCPU, what = c, row.route+" "+row.dir
		}
	}
	if what != "" {
		p("| both tunnel processes ≤ 4 CPU-s per GiB | %.2f (highest: %s) | %s |", worstCPU, what, verdict(worstCPU <= 4))
	}
	var floor []string
	for _, row := range r.bulk {
		if row.route == quicFloorName {
			floor = append(floor, fmt.Sprintf("%.2f %s", cpuPerGiB(row.cpu[0]+row.cpu[1], row.bytes), row.dir))
		}
	}
	if len(floor) > 0 {
		p("| (reference: CPU-s per GiB of two relays over bare quic-go, no tunnel) | %s | |", strings.Join(floor, ", "))
	}
	r.tcpTargets(p)
	if s := r.setup; s != nil {
		d := s.tunnelP[0] - s.directP[0]
		p("| session set-up p50 ≤ direct + 1 ms | +%s ms (%s vs %s) | %s |", ms(d), ms(s.tunnelP[0]), ms(s.directP[0]), verdict(d <= time.Millisecond))
		f := s.fastP[0] - s.directP[0]
		p("| the same with localproxy `--fast-open` | +%s ms (%s vs %s) | %s |", ms(f), ms(s.fastP[0]), ms(s.directP[0]), verdict(f <= time.Millisecond))
		p("| (reference: the same through two plain TCP relays, no tunnel) | +%s ms (%s vs %s) | |", ms(s.floorP[0]-s.directP[0]), ms(s.floorP[0]), ms(s.directP[0]))
	}
	if peak := r.smallPeak; len(r.small) > 0 {
		p("| peak RSS ≤ 30 MiB per process, 64-client load | localproxy %.1f MiB, coordinator %.1f MiB | %s |",
			float64(peak[0])/mib, float64(peak[1])/mib, verdict(max(peak[0], peak[1]) <= 30*mib))
	}
	if m := r.mem; m != nil && m.opened > 0 {
		per := m.perSession()
		p("| ≤ 20 KiB per idle open session (%d sessions) | localproxy %.1f KiB, coordinator %.1f KiB | %s |",
			m.sessions, per[0]/1024, per[1]/1024, verdict(max(per[0], per[1]) <= 20*1024 && m.answered == m.sessions))
	}
	p("")
}

// tcpTargets are issue 19's targets for the TCP transport: the rows
// through the localproxy with --transport tcp.
func (r *report) tcpTargets(p printer) {
	worst, what, worstCPU, cpuWhat := 1e9, "", 0.0, ""
	for _, row := range r.bulk {
		if !strings.HasPrefix(row.route, tcpTransportPrefix) {
			continue
		}
		if x := row.ratio(); strings.Contains(row.route, "reverse") && x < worst {
			worst, what = x, row.route+" "+row.dir
		}
		if c := cpuPerGiB(row.cpu[0]+row.cpu[1], row.bytes); c > worstCPU {
			worstCPU, cpuWhat = c, row.route+" "+row.dir
		}
	}
	if what != "" {
		p("| reverse bulk over the TCP transport ≥ 0.20× direct (issue 19) | %.3f× (lowest: %s) | %s |", worst, what, verdict(worst >= 0.20))
	}
	if cpuWhat != "" {
		p("| both processes ≤ 4.5 CPU-s per GiB over the TCP transport (issue 19) | %.2f (highest: %s) | %s |", worstCPU, cpuWhat, verdict(worstCPU <= 4.5))
	}
	fwd, fwdWhat := 1e9, ""
	for _, row := range r.bulk {
		if strings.HasPrefix(row.route, tcpTransportPrefix+"forward") && row.ratio() < fwd {
			fwd, fwdWhat = row.ratio(), row.route+" "+row.dir
		}
	}
	if fwdWhat != "" {
		p("| forward bulk over the TCP transport (absolute-form and CONNECT) ≥ 0.15× (issue 19) | %.3f× (lowest: %s) | %s |", fwd, fwdWhat, verdict(fwd >= 0.15))
	}
	for _, row := range r.small {
		if !strings.HasPrefix(row.route, tcpTransportPrefix) || !strings.Contains(row.route, "reverse") {
			continue
		}
		want := 0.35
		if strings.Contains(row.route, "--expose-tcp") {
			want = 0.40
		}
		x := row.ratio()
		p("| %s req/s ≥ %.2f× (issue 19, Go load) | %.3f× | %s |", row.route, want, x, verdict(x >= want))
	}
	// Peak RSS: under the Go 64-client loads, which run before any bulk
	// transfer (as issue 6's target), and the highest of every TCP row,
	// bulk included (RSS left high by one row is the next row's floor).
	var load, all procStat[int64]
	higher := func(a, b procStat[int64]) procStat[int64] { return procStat[int64]{max(a[0], b[0]), max(a[1], b[1])} }
	for _, row := range r.small {
		if strings.HasPrefix(row.route, tcpTransportPrefix) {
			load, all = higher(load, row.peak), higher(all, row.peak)
		}
	}
	for _, row := range r.wrk {
		if row.path.transport == "TCP" && row.path.name != noUIPathName {
			all = higher(all, row.peak)
		}
	}
	for _, row := range r.bulk {
		if strings.HasPrefix(row.route, tcpTransportPrefix) {
			all = higher(all, row.peak)
		}
	}
	for _, row := range r.curl {
		if row.path.transport == "TCP" && row.path.name != noUIPathName {
			all = higher(all, row.peak)
		}
	}
	if load[0] > 0 {
		p("| peak RSS ≤ 30 MiB per process over the TCP transport, Go 64-client loads (issue 19) | localproxy %.1f MiB, coordinator %.1f MiB | %s |",
			float64(load[0])/mib, float64(load[1])/mib, verdict(max(load[0], load[1]) <= 30*mib))
	}
	if all[0] > 0 {
		p("| the same, highest of every TCP row, bulk included (inspector on) | localproxy %.1f MiB, coordinator %.1f MiB | %s |",
			float64(all[0])/mib, float64(all[1])/mib, verdict(max(all[0], all[1]) <= 30*mib))
	}
	r.toolTargets(p)
}

// toolTargets are issue 19's targets on the curl and wrk rows (lean
// origin), the figures comparable with the for other tunnels.
func (r *report) toolTargets(p printer) {
	for _, row := range r.curl {
		if row.path.transport != "TCP" || row.path.name == noUIPathName {
			continue
		}
		want := 0.15
		if row.path.reverse {
			want = 0.20
		}
		x := row.ratio()
		p("| curl download, %s ≥ %.2f× (issue 19, lean origin) | %.3f× | %s |", row.path.label(), want, x, verdict(x >= want))
		c := cpuPerGiB(row.cpu[0]+row.cpu[1], row.tunnel.bytes)
		p("| the same, both processes ≤ 4.5 CPU-s per GiB | %.2f | %s |", c, verdict(c <= 4.5))
	}
	for _, row := range r.wrk {
		if row.path.transport != "TCP" || !row.path.reverse || row.path.name == noUIPathName {
			continue
		}
		want := 0.35
		if strings.Contains(row.path.name, "--expose-tcp") {
			want = 0.40
		}
		x := row.ratio()
		p("| wrk -t2 -c64, %s req/s ≥ %.2f× (issue 19, lean origin) | %.3f× | %s |", row.path.label(), want, x, verdict(x >= want))
	}
}

func (r *report) toolTables(p printer) {
	if len(r.toolsMissing) > 0 {
		p("Not measured: %s is not installed (scripts/test-deps.sh --bench installs it).", strings.Join(r.toolsMissing, ", "))
		p("")
	}
	if len(r.curl) > 0 {
		p("## curl downloads from a lean origin (%d MiB each, issue 19)", r.cfg.bulk/mib)
		p("")
		p("`curl -o /dev/null` fetching /bytes from the lean origin (the driver run again as a bare net/http server that")
		p("writes one fixed 64 KiB buffer; e2e/benchdriver/origin.go) instead of the demo app, whose slower path flatters")
		p("ratios. Each round measures direct once, then every path; the median round by ratio is shown. Paths through")
		p("localproxy on QUIC (the default localproxy) and on the TCP transport (`--transport tcp`); both run with the")
		p("inspector page on, as by default, and the last row is a third localproxy on TCP with `--ui=false`. CPU and")
		p("peak RSS are the path's localproxy and coordinator.")
		p("")
		p("| path | MB/s | direct MB/s | ratio | ratio in each round | CPU-s/GiB localproxy | coordinator | both | peak RSS MiB localproxy / coordinator |")
		p("|---|---|---|---|---|---|---|---|---|")
		for _, row := range r.curl {
			t, d := row.tunnel.value(), row.direct.value()
			b := row.tunnel.bytes
			p("| %s | %.0f | %.0f | %s | %s | %.2f | %.2f | %.2f | %.1f / %.1f |", row.path.label(), t, d, ratio(t, d), rounds(row.ratios),
				cpuPerGiB(row.cpu[0], b), cpuPerGiB(row.cpu[1], b), cpuPerGiB(row.cpu[0]+row.cpu[1], b),
				float64(row.peak[0])/mib, float64(row.peak[1])/mib)
		}
		p("")
	}
	if len(r.wrk) > 0 {
		p("## wrk -t2 -c64 --latency against the lean origin (GET /healthz, %s each, issue 19)", max(time.Second, r.cfg.load.Round(time.Second)))
		p("")
		p("p50 and p99 are wrk's. Forward absolute-form sends the absolute URL to localproxy (a wrk script sets the request")
		p("target); wrk speaks no CONNECT, so `CONNECT` has only the Go load's row above. Same paths and processes as the")
		p("curl table.")
		p("")
		p("| path | req/s | direct req/s | ratio | ratio in each round | p50 ms | direct p50 | p99 ms | direct p99 | CPU-ms per 1000 req (both) | peak RSS MiB localproxy / coordinator | errors |")
		p("|---|---|---|---|---|---|---|---|---|---|---|---|")
		for _, row := range r.wrk {
			t, d := row.tunnel, row.direct
			p("| %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %.0f | %.1f / %.1f | %d |", row.path.label(), t.value(), d.value(), ratio(t.value(), d.value()),
				rounds(row.ratios), ms(t.p50), ms(d.p50), ms(t.p99), ms(d.p99),
				float64((row.cpu[0]+row.cpu[1]).Milliseconds())/float64(t.requests)*1000,
				float64(row.peak[0])/mib, float64(row.peak[1])/mib, t.errors)
		}
		p("")
	}
}

func (m *memResult) perSession() [2]float64 {
	var out [2]float64
	for i := range out {
		out[i] = float64(m.held[i]-m.before[i]) / float64(m.opened)
	}
	return out
}

func (r *report) bulkTable(p printer) {
	if len(r.bulk) == 0 {
		return
	}
	p("## Bulk transfers (%d MiB each)", r.cfg.bulk/mib)
	p("")
	p("Download is GET /bytes from the demo app, upload a POST the demo app reads whole (and hashes) before answering;")
	p("CONNECT carries plain HTTP so both sides of the comparison move the same bytes. The public HTTPS row is for")
	p("reference (no target covers it, and the targets above leave it out): the driver speaks TLS to coordinator, which")
	p("decrypts, while direct stays plain HTTP; the same holds in the next table. The last path is the floor of a QUIC")
	p("tunnel's cost, also for reference: `CONNECT` through two relay processes joined by one bare quic-go connection")
	p("(TLS 1.3, the tunnel's socket set-up and flow-control windows, one core each), one stream per connection, no")
	p("tunnel protocol, no HTTP parsing, no logs; its CPU columns are the entry relay's and the exit relay's.")
	p("")
	p("| path | direction | MB/s | direct MB/s | ratio | ratio in each round | CPU-s/GiB localproxy | coordinator | both | peak RSS MiB localproxy / coordinator |")
	p("|---|---|---|---|---|---|---|---|---|---|")
	for _, row := range r.bulk {
		t, d := mbps(row.bytes, row.tunnel), mbps(row.bytes, row.direct)
		p("| %s | %s | %.0f | %.0f | %s | %s | %.2f | %.2f | %.2f | %.1f / %.1f |", row.route, row.dir, t, d, ratio(t, d), rounds(row.ratios),
			cpuPerGiB(row.cpu[0], row.bytes), cpuPerGiB(row.cpu[1], row.bytes), cpuPerGiB(row.cpu[0]+row.cpu[1], row.bytes),
			float64(row.peak[0])/mib, float64(row.peak[1])/mib)
	}
	p("")
}

func (r *report) smallTable(p printer) {
	if len(r.small) == 0 {
		return
	}
	p("## Small requests (%d concurrent keep-alive clients, GET /healthz, %s each)", r.cfg.clients, r.cfg.load)
	p("")
	p("The last path is the bulk table's QUIC floor (two relays over bare quic-go) under the same load; its CPU and RSS")
	p("columns are the two relays'.")
	p("")
	p("| path | req/s | direct req/s | ratio | ratio in each round | p50 ms | direct p50 | p99 ms | direct p99 | p99 ratio | CPU-ms per 1000 req (both) | peak RSS MiB localproxy / coordinator |")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, row := range r.small {
		t, d := row.tunnel, row.direct
		p("| %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s | %.0f | %.1f / %.1f |", row.route, t.rate(), d.rate(), ratio(t.rate(), d.rate()), rounds(row.ratios),
			ms(t.p50), ms(d.p50), ms(t.p99), ms(d.p99), ratio(t.p99.Seconds(), d.p99.Seconds()),
			float64((row.cpu[0]+row.cpu[1]).Milliseconds())/float64(t.requests)*1000,
			float64(row.peak[0])/mib, float64(row.peak[1])/mib)
	}
	p("")
}

func (r *report) setupTable(p printer) {
	s := r.setup
	if s == nil {
		return
	}
	p("## Session set-up (%d new sessions each, alternating)", s.n)
	p("")
	p("New connection to the first byte of the answer to one small request. Direct: TCP connect + request. Tunnel: TCP")
	p("connect to localproxy, CONNECT (a new tunnel session: Open stream, coordinator dials the target, dial-back")
	p("stream, ack; no QUIC handshake), 200, then the same request. With `--fast-open` (a second localproxy on the same")
	p("coordinator) the 200 comes at once and the request follows the Open on its stream, relayed without dial-back.")
	p("Two rows are floors for a tunnel's shape, no tunnel: two plain relay processes (a CONNECT proxy that answers once")
	p("it has connected to the second, which connects to the target), no encryption, no multiplexing, one core each;")
	p("then the same two relays joined by one QUIC connection (quic-go, as in the bulk floor), where the first answers")
	p("once it has opened a stream, which costs no round trip, and the request follows on that stream as with fast open.")
	p("Reverse: a new TCP connection to coordinator's public HTTP port, routed by name to the demo app exposed by")
	p("localproxy (a new reverse session, its first bytes right behind the ReverseOpen), and the same request.")
	p("CPU is user+sys of the path's two processes over %d more sessions on that path alone, one after another.", s.cpuSessions)
	p("")
	perSession := func(d time.Duration) string { return ms(d / time.Duration(s.cpuSessions)) }
	p("| path | p50 ms | p99 ms | p50 − direct | p99 − direct | CPU ms per session (both processes) |")
	p("|---|---|---|---|---|---|")
	p("| direct | %s | %s | | | |", ms(s.directP[0]), ms(s.directP[1]))
	p("| forward CONNECT, new session | %s | %s | +%s | +%s | %s |", ms(s.tunnelP[0]), ms(s.tunnelP[1]),
		ms(s.tunnelP[0]-s.directP[0]), ms(s.tunnelP[1]-s.directP[1]), perSession(s.tunnelCPU))
	p("| forward CONNECT, new session, `--fast-open` | %s | %s | +%s | +%s | %s |", ms(s.fastP[0]), ms(s.fastP[1]),
		ms(s.fastP[0]-s.directP[0]), ms(s.fastP[1]-s.directP[1]), perSession(s.fastCPU))
	p("| CONNECT through two plain TCP relays (floor, no tunnel) | %s | %s | +%s | +%s | %s |", ms(s.floorP[0]), ms(s.floorP[1]),
		ms(s.floorP[0]-s.directP[0]), ms(s.floorP[1]-s.directP[1]), perSession(s.floorCPU))
	p("| CONNECT through two relays over bare quic-go (no tunnel protocol) | %s | %s | +%s | +%s | %s |", ms(s.quicFloorP[0]), ms(s.quicFloorP[1]),
		ms(s.quicFloorP[0]-s.directP[0]), ms(s.quicFloorP[1]-s.directP[1]), perSession(s.quicFloorCPU))
	p("| reverse public port, new connection | %s | %s | +%s | +%s | %s |", ms(s.reverseP[0]), ms(s.reverseP[1]),
		ms(s.reverseP[0]-s.directP[0]), ms(s.reverseP[1]-s.directP[1]), perSession(s.reverseCPU))
	p("")
}

func (r *report) memTable(p printer) {
	m := r.mem
	if m == nil {
		return
	}
	p("## Memory per idle session (%d CONNECT sessions held %s)", m.sessions, r.cfg.hold)
	p("")
	p("Each session is a CONNECT to the demo app with one request answered; all are then left idle for %s and", r.cfg.hold)
	p("asked again. Opened %d in %s; %d of %d answered afterwards.", m.opened, m.openTime.Round(time.Millisecond), m.answered, m.sessions)
	if m.openErr != nil {
		p("First error opening: `%v`.", m.openErr)
	}
	if m.askErr != nil {
		p("First error asking again: `%v`.", m.askErr)
	}
	p("")
	p("| process | RSS before | RSS held | per 1,000 sessions | per session | RSS after closing | goroutines per session | heap in use per session | stacks per session |")
	p("|---|---|---|---|---|---|---|---|---|")
	per := m.perSession()
	for i, name := range procNames {
		n := float64(max(m.opened, 1))
		p("| %s | %.1f MiB | %.1f MiB | %.2f MiB | %.1f KiB | %.1f MiB | %.2f | %.1f KiB | %.1f KiB |", name,
			float64(m.before[i])/mib, float64(m.held[i])/mib, per[i]*1000/mib, per[i]/1024, float64(m.after[i])/mib,
			float64(m.goHeld[i]-m.goBefore[i])/n, (m.heapHeld[i]-m.heapBefore[i])/n/1024, (m.stackHeld[i]-m.stackBefore[i])/n/1024)
	}
	p("")
	for i, name := range procNames {
		if m.heapTop[i] == "" {
			continue
		}
		p("<details><summary>%s: heap in use while the sessions are held (pprof -top, inuse_space)</summary>", name)
		p("")
		p("```")
		p("%s", m.heapTop[i])
		p("```")
		p("</details>")
		p("")
	}
}

func (r *report) profiles(p printer) {
	if r.cpuTop[0] == "" {
		return
	}
	p("## CPU profile of the bulk path")
	p("")
	p("%d s CPU profiles (`--pprof` on `--metrics-listen`, /debug/pprof/profile) of both tunnel processes while",
		r.profileSecs)
	p("64 MiB downloads ran through CONNECT (%d MiB completed over QUIC, %d MiB over the TCP transport in the", r.profileMoved/mib, r.tcpProfileMoved/mib)
	p("second pair of profiles).")
	p("")
	r.profilePair(p, "", r.cpuTop, r.cpuCum)
	if r.tcpCPUTop[0] != "" {
		r.profilePair(p, " over the TCP transport", r.tcpCPUTop, r.tcpCPUCum)
	}
}

func (r *report) profilePair(p printer, suffix string, top, cum procStat[string]) {
	for i, name := range procNames {
		p("### %s%s", name, suffix)
		p("")
		p("```")
		p("%s", top[i])
		p("```")
		p("")
		p("<details><summary>%s%s, cumulative (-cum)</summary>", name, suffix)
		p("")
		p("```")
		p("%s", cum[i])
		p("```")
		p("</details>")
		p("")
	}
}
