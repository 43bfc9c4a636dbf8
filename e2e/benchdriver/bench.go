package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// procStat is a figure for each of a path's two processes: [0] the one
// beside the client (localproxy, or the entry relay of a floor), [1] the
// one on the public host (coordinator, or the exit relay).
type procStat[T any] [2]T

// cpuOf samples the processes' CPU time.
func cpuOf(procs [2]*proc) (procStat[time.Duration], error) {
	var out procStat[time.Duration]
	for i, p := range procs {
		t, err := p.cpuTime()
		if err != nil {
			return out, err
		}
		out[i] = t
	}
	return out, nil
}

func rssOf(procs [2]*proc) (rss, peak procStat[int64], err error) {
	for i, p := range procs {
		if rss[i], peak[i], err = p.memory(); err != nil {
			return
		}
	}
	return
}

func resetPeaks(procs [2]*proc) error {
	for _, p := range procs {
		if err := p.resetPeak(); err != nil {
			return fmt.Errorf("reset peak RSS of %s: %w", p.name, err)
		}
	}
	return nil
}

// measured runs f with the processes' CPU time and peak RSS counted
// around it.
func measured(procs [2]*proc, f func() error) (elapsed time.Duration, cpu procStat[time.Duration], peak procStat[int64], err error) {
	if err = resetPeaks(procs); err != nil {
		return
	}
	c0, err := cpuOf(procs)
	if err != nil {
		return
	}
	t0 := time.Now()
	if err = f(); err != nil {
		return
	}
	elapsed = time.Since(t0)
	c1, err := cpuOf(procs)
	if err != nil {
		return
	}
	for i := range cpu {
		cpu[i] = c1[i] - c0[i]
	}
	_, peak, err = rssOf(procs)
	return
}

// memResult is the idle-session memory benchmark's outcome.
type memResult struct {
	sessions, opened, answered int
	openTime                   time.Duration
	before, held, after        procStat[int64] // RSS
	goBefore, goHeld           procStat[int]   // goroutines
	heapBefore, heapHeld       procStat[float64]
	stackBefore, stackHeld     procStat[float64]
	heapTop                    procStat[string]
	openErr, askErr            error
}

var runtimeMetrics = []string{"go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes"}

func (l *lab) metricsBases() []string { return []string{l.lpMetrics, l.coMetrics} }

// runtimeSample reads goroutines, heap and stack in use of both processes.
func runtimeSample(ctx context.Context, l *lab) (g procStat[int], heap, stack procStat[float64], err error) {
	for i, base := range l.metricsBases() {
		if g[i], err = goroutines(ctx, base); err != nil {
			return
		}
		var m map[string]float64
		if m, err = goMetrics(ctx, base, runtimeMetrics...); err != nil {
			return
		}
		heap[i], stack[i] = m[runtimeMetrics[0]], m[runtimeMetrics[1]]
	}
	return
}

// benchMemory opens cfg.sessions CONNECT sessions to the demo app, one
// request each, holds them idle for cfg.hold, then asks every one again.
func benchMemory(ctx context.Context, cfg config, l *lab, rep *report) error {
	m := &memResult{sessions: cfg.sessions}
	rep.mem = m
	var err error
	time.Sleep(time.Second) // let start-up garbage settle
	if m.goBefore, m.heapBefore, m.stackBefore, err = runtimeSample(ctx, l); err != nil {
		return err
	}
	if m.before, _, err = rssOf(l.procs()); err != nil {
		return err
	}
	sessions := make([]*held, cfg.sessions)
	defer func() {
		for _, h := range sessions {
			if h != nil {
				h.c.Close()
			}
		}
	}()
	t0 := time.Now()
	failed, ferr := parallel(ctx, cfg.sessions, 64, func(i int) error {
		h, err := openHeld(ctx, l.proxy, l.app)
		sessions[i] = h
		return err
	})
	m.openTime, m.opened, m.openErr = time.Since(t0), cfg.sessions-failed, ferr
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// Hold: the heap profile and runtime figures halfway, RSS at the end.
	select {
	case <-time.After(cfg.hold / 2):
	case <-ctx.Done():
		return ctx.Err()
	}
	if m.goHeld, m.heapHeld, m.stackHeld, err = runtimeSample(ctx, l); err != nil {
		return err
	}
	for i, p := range l.procs() {
		file := filepath.Join(l.dir, p.name+".heap.pb.gz")
		if err := fetch(ctx, l.metricsBases()[i]+"/debug/pprof/heap", file); err != nil {
			return err
		}
		if m.heapTop[i], err = pprofTop(ctx, filepath.Join(cfg.bin, p.name), file, "-sample_index=inuse_space", "-nodecount=12"); err != nil {
			return err
		}
	}
	select {
	case <-time.After(cfg.hold - cfg.hold/2):
	case <-ctx.Done():
		return ctx.Err()
	}
	if m.held, _, err = rssOf(l.procs()); err != nil {
		return err
	}
	failed, m.askErr = parallel(ctx, cfg.sessions, 64, func(i int) error {
		if sessions[i] == nil {
			return errors.New("never opened")
		}
		return sessions[i].ask()
	})
	m.answered = cfg.sessions - failed
	for i, h := range sessions {
		if h != nil {
			h.c.Close()
			sessions[i] = nil
		}
	}
	time.Sleep(3 * time.Second)
	m.after, _, err = rssOf(l.procs())
	return err
}

// setupResult is the session set-up benchmark's outcome.
type setupResult struct {
	n                                                     int
	directP, tunnelP, fastP, floorP, quicFloorP, reverseP [2]time.Duration // p50, p99
	// CPU time of the two processes on each path (localproxy and
	// coordinator; the two relays for a floor) over cpuSessions more.
	cpuSessions                                            int
	tunnelCPU, fastCPU, floorCPU, quicFloorCPU, reverseCPU time.Duration
}

// cpuAround runs f and returns the CPU time procs used meanwhile.
func cpuAround(procs []*proc, f func() error) (time.Duration, error) {
	before, err := totalCPU(procs)
	if err != nil {
		return 0, err
	}
	if err := f(); err != nil {
		return 0, err
	}
	after, err := totalCPU(procs)
	return after - before, err
}

// totalCPU is the CPU time procs have used so far, together.
func totalCPU(procs []*proc) (time.Duration, error) {
	var sum time.Duration
	for _, p := range procs {
		t, err := p.cpuTime()
		if err != nil {
			return 0, err
		}
		sum += t
	}
	return sum, nil
}

// benchSetup times new sessions, direct, CONNECT, CONNECT with fast open,
// CONNECT through two plain relays and through two relays over QUIC (the
// floors, see relay.go and quicrelay.go) and a new connection to the
// public port (reverse) in turn, so all six see the same load from the
// rest of the machine.
func benchSetup(ctx context.Context, cfg config, l *lab, rep *report) error {
	s := &setupResult{n: cfg.setups, cpuSessions: max(1, cfg.setups/4)}
	rep.setup = s
	viaProxy := func(proxy string) func() (time.Duration, error) {
		return func() (time.Duration, error) { return firstByte(ctx, l.app, proxy) }
	}
	paths := []struct {
		name    string
		session func() (time.Duration, error)
		p       *[2]time.Duration
		procs   []*proc // whose CPU is measured; none for direct
		cpu     *time.Duration
	}{
		{"direct", viaProxy(""), &s.directP, nil, nil},
		{"CONNECT", viaProxy(l.proxy), &s.tunnelP, []*proc{l.localpx, l.coordinator}, &s.tunnelCPU},
		{"CONNECT with fast open", viaProxy(l.fastProxy), &s.fastP, []*proc{l.localpxFast, l.coordinator}, &s.fastCPU},
		{"CONNECT through the plain relays", viaProxy(l.relayProxy), &s.floorP, l.relays[:], &s.floorCPU},
		{"CONNECT through the QUIC relays", viaProxy(l.quicRelayProxy), &s.quicFloorP, l.quicRelays[:], &s.quicFloorCPU},
		{"reverse", func() (time.Duration, error) { return reverseFirstByte(ctx, l.public) },
			&s.reverseP, []*proc{l.localpx, l.coordinator}, &s.reverseCPU},
	}
	times := make([][]time.Duration, len(paths))
	for range cfg.setups {
		for i, path := range paths {
			d, err := path.session()
			if err != nil {
				return fmt.Errorf("%s set-up: %w", path.name, err)
			}
			times[i] = append(times[i], d)
		}
	}
	for i, path := range paths {
		*path.p = percentiles(times[i])
	}

	// CPU per session: a block of sessions on each path in turn, with
	// time after the last for the processes to finish with it.
	for _, path := range paths {
		if path.cpu == nil {
			continue
		}
		cpu, err := cpuAround(path.procs, func() error {
			for range s.cpuSessions {
				if _, err := path.session(); err != nil {
					return err
				}
			}
			time.Sleep(100 * time.Millisecond)
			return nil
		})
		if err != nil {
			return fmt.Errorf("CPU per %s session: %w", path.name, err)
		}
		*path.cpu = cpu
	}
	return nil
}

func percentiles(d []time.Duration) [2]time.Duration {
	d = slices.Clone(d)
	slices.Sort(d)
	return [2]time.Duration{d[len(d)/2], d[len(d)*99/100]}
}

// bulkRow is one bulk transfer through the tunnel next to the same one
// made directly just before it.
type bulkRow struct {
	route, dir     string
	reference      bool // no target covers it (route.reference)
	bytes          int64
	tunnel, direct time.Duration
	cpu            procStat[time.Duration]
	peak           procStat[int64]
	ratios         []float64 // tunnel/direct of every round, in run order
}

// benchBulk moves cfg.bulk bytes each way on each path, directly and
// through the tunnel, cfg.rounds times, and keeps each transfer's median
// pair (by ratio).
func benchBulk(ctx context.Context, cfg config, l *lab, rep *report, log *slog.Logger) error {
	direct := directRoute(l.app)
	type transfer struct {
		name string
		f    func(context.Context, route, int64) error
	}
	routes := []route{absoluteFormRoute(l.app, l.proxy), connectRoute(l.app, l.proxy), reverseRoute(l.public), reverseTLSRoute(l.publicTLS, l.roots),
		quicFloorRoute(l.app, l.quicRelayProxy), overTCP(absoluteFormRoute(l.app, l.tcpProxy)), overTCP(connectRoute(l.app, l.tcpProxy)),
		overTCP(exposeTCPRoute(l.tcpPublic)), overTCP(hostRoute(l.public, "appt.localhost"))}
	dirs := []transfer{{"download", download}, {"upload", upload}}
	rounds := make([][]bulkRow, len(routes)*len(dirs))
	for range cfg.rounds {
		for i, r := range routes {
			for j, dir := range dirs {
				row, err := bulkPair(ctx, cfg, l, direct, r, dir.name, dir.f, log)
				if err != nil {
					return err
				}
				rounds[i*len(dirs)+j] = append(rounds[i*len(dirs)+j], row)
			}
		}
	}
	for _, rows := range rounds {
		row, ratios := median(rows, bulkRow.ratio)
		row.ratios = ratios
		rep.bulk = append(rep.bulk, row)
	}
	return nil
}

// bulkPair moves cfg.bulk bytes directly, then through r.
func bulkPair(ctx context.Context, cfg config, l *lab, direct, r route, dir string,
	f func(context.Context, route, int64) error, log *slog.Logger) (bulkRow, error) {
	row := bulkRow{route: r.name, reference: r.reference, dir: dir, bytes: cfg.bulk}
	t0 := time.Now()
	if err := f(ctx, direct, cfg.bulk); err != nil {
		return row, err
	}
	row.direct = time.Since(t0)
	var err error
	row.tunnel, row.cpu, row.peak, err = measured(l.measuredOn(r), func() error { return f(ctx, r, cfg.bulk) })
	if err != nil {
		return row, err
	}
	log.Info("bulk", "route", r.name, "dir", dir, "MB/s", fmt.Sprintf("%.0f", mbps(row.bytes, row.tunnel)),
		"direct MB/s", fmt.Sprintf("%.0f", mbps(row.bytes, row.direct)))
	return row, nil
}

// median returns the row with the median key (the lower middle one of an
// even count) and every row's key, in run order.
func median[T any](rows []T, key func(T) float64) (T, []float64) {
	keys := make([]float64, len(rows))
	for i, r := range rows {
		keys[i] = key(r)
	}
	byKey := slices.Clone(rows)
	slices.SortStableFunc(byKey, func(a, b T) int { return cmp.Compare(key(a), key(b)) })
	return byKey[(len(byKey)-1)/2], keys
}

func (row bulkRow) ratio() float64 { return row.direct.Seconds() / row.tunnel.Seconds() }

func (row smallRow) ratio() float64 { return row.tunnel.rate() / row.direct.rate() }

func mbps(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

// smallRow is one small-request load through the tunnel next to the same
// load made directly just before it.
type smallRow struct {
	route          string
	reference      bool // no target covers it (route.reference)
	tunnel, direct loadResult
	cpu            procStat[time.Duration]
	peak           procStat[int64]
	ratios         []float64 // tunnel/direct req/s of every round, in run order
}

// benchSmall runs the small-request load on each path, directly and
// through the tunnel, cfg.rounds times, and keeps each path's median pair
// (by ratio). Peak RSS is the highest of every round.
func benchSmall(ctx context.Context, cfg config, l *lab, rep *report) error {
	direct := directRoute(l.app)
	routes := []route{absoluteFormRoute(l.app, l.proxy), connectRoute(l.app, l.proxy), reverseRoute(l.public), reverseTLSRoute(l.publicTLS, l.roots),
		reverseH2Route(l.publicTLS, l.roots),
		quicFloorRoute(l.app, l.quicRelayProxy), overTCP(absoluteFormRoute(l.app, l.tcpProxy)), overTCP(connectRoute(l.app, l.tcpProxy)),
		overTCP(exposeTCPRoute(l.tcpPublic)), overTCP(hostRoute(l.public, "appt.localhost"))}
	rounds := make([][]smallRow, len(routes))
	for range cfg.rounds {
		for i, r := range routes {
			if !cfg.runsPath(r.name) {
				continue
			}
			row := smallRow{route: r.name, reference: r.reference}
			var err error
			if row.direct, err = smallLoad(ctx, direct, cfg.clients, cfg.load); err != nil {
				return err
			}
			_, row.cpu, row.peak, err = measured(l.measuredOn(r), func() error {
				var err error
				row.tunnel, err = smallLoad(ctx, r, cfg.clients, cfg.load)
				return err
			})
			if err != nil {
				return err
			}
			for k := range rep.smallPeak {
				if !row.reference {
					rep.smallPeak[k] = max(rep.smallPeak[k], row.peak[k])
				}
			}
			rounds[i] = append(rounds[i], row)
		}
	}
	for _, rows := range rounds {
		if len(rows) == 0 {
			continue
		}
		row, ratios := median(rows, smallRow.ratio)
		row.ratios = ratios
		rep.small = append(rep.small, row)
	}
	return nil
}

// benchProfile takes CPU profiles of both tunnel processes while bulk
// downloads run through CONNECT, over QUIC and then over the TCP
// transport.
func benchProfile(ctx context.Context, cfg config, l *lab, rep *report) error {
	rep.profileSecs = max(int(cfg.profile.Seconds()), 1)
	if err := profilePath(ctx, cfg, l, l.procs(), l.metricsBases(), connectRoute(l.app, l.proxy), "",
		&rep.profileMoved, &rep.cpuTop, &rep.cpuCum); err != nil {
		return err
	}
	return profilePath(ctx, cfg, l, [2]*proc{l.localpxTCP, l.coordinator}, []string{l.tcpMetrics, l.coMetrics},
		connectRoute(l.app, l.tcpProxy), ".tcp", &rep.tcpProfileMoved, &rep.tcpCPUTop, &rep.tcpCPUCum)
}

// profilePath profiles procs (pprof at bases) while downloads run along r.
func profilePath(ctx context.Context, cfg config, l *lab, procs [2]*proc, bases []string, r route, suffix string,
	movedOut *int64, top, cum *procStat[string]) error {
	secs := max(int(cfg.profile.Seconds()), 1)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var moved int64
	wg.Go(func() {
		// Bounded: at most 256 transfers, and only while profiling.
		for range 256 {
			if pctx.Err() != nil || download(pctx, r, 64<<20) != nil {
				return
			}
			moved += 64 << 20
		}
	})
	errs := make([]error, 2)
	files := make([]string, 2)
	var pw sync.WaitGroup
	for i, p := range procs {
		files[i] = filepath.Join(l.dir, p.name+suffix+".cpu.pb.gz")
		pw.Go(func() {
			errs[i] = fetch(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", bases[i], secs), files[i])
		})
	}
	pw.Wait()
	cancel()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	*movedOut = moved
	for i, p := range procs {
		bin, _, _ := strings.Cut(p.name, "+")
		var err error
		if top[i], err = pprofTop(ctx, filepath.Join(cfg.bin, bin), files[i], "-nodecount=25"); err != nil {
			return err
		}
		if cum[i], err = pprofTop(ctx, filepath.Join(cfg.bin, bin), files[i], "-cum", "-nodecount=25"); err != nil {
			return err
		}
	}
	return nil
}

// pprofTop renders a profile's top table with go tool pprof.
func pprofTop(ctx context.Context, bin, file string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof", "-top"}, args...), bin, file)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go tool pprof %s: %w\n%s", file, err, out)
	}
	var keep []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(line, "File:") && !strings.HasPrefix(line, "Build ID:") && !strings.HasPrefix(line, "Time:") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n"), nil
}
