package quictun

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Reasons a connection to coordinator failed to authenticate, counted in
// ServerStats.AuthFailuresByReason; the metrics use them as the "reason"
// label.
const (
	// AuthInvalidToken is a Hello whose token Authorize refused.
	AuthInvalidToken = "invalid_token"
	// AuthCertificate is a client without an acceptable certificate
	// (with ServerConfig.ClientCAs).
	AuthCertificate = "certificate"
	// AuthInvalidWorkerToken is a dial-back worker with a wrong token.
	AuthInvalidWorkerToken = "invalid_worker_token"
	// AuthNoHello is a connection that sent no Hello within HelloTimeout.
	AuthNoHello = "no_hello"
	// AuthBadHello is a malformed Hello, one of another protocol version,
	// or a stream opened before coordinator's Welcome.
	AuthBadHello = "bad_hello"
)

// AuthReasons lists every reason, for metrics.
var AuthReasons = []string{AuthInvalidToken, AuthCertificate, AuthInvalidWorkerToken, AuthNoHello, AuthBadHello}

// Defaults of the failed-authentication log.
const (
	// authLogEvery is the least time between two lines about failed
	// authentications from one source address.
	authLogEvery = 10 * time.Second
	// maxAuthLogSources bounds the source addresses remembered; failures
	// from further ones are summed up as from "other sources".
	maxAuthLogSources = 1024
)

// authLog counts failed authentications by reason and logs them, so that
// a flood of them cannot flood the log: the first failure from a source
// address is logged in full; further ones within every are counted, and a
// summary line with their number follows every after the first, for as
// long as they go on.
type authLog struct {
	log   *slog.Logger
	every time.Duration

	mu       sync.Mutex
	byReason map[string]int64
	sources  map[netip.Addr]*authSource // the invalid Addr stands for other sources
	closed   bool
}

// authSource is a source address with failures being held back.
type authSource struct {
	unlogged map[string]int64 // by reason
	timer    *time.Timer
}

func newAuthLog(log *slog.Logger, every time.Duration) *authLog {
	return &authLog{log: log, every: every, byReason: map[string]int64{}, sources: map[netip.Addr]*authSource{}}
}

// fail counts a failed authentication from src for reason and logs msg
// with attrs, unless src had a line within every.
func (a *authLog) fail(src netip.Addr, reason, msg string, attrs ...any) {
	a.mu.Lock()
	a.byReason[reason]++
	key := src
	e := a.sources[key]
	if e == nil && len(a.sources) >= maxAuthLogSources {
		key = netip.Addr{}
		e = a.sources[key]
	}
	if e != nil {
		e.unlogged[reason]++
		a.mu.Unlock()
		return
	}
	if !a.closed {
		e = &authSource{unlogged: map[string]int64{}}
		e.timer = time.AfterFunc(a.every, func() { a.flush(key) })
		a.sources[key] = e
	}
	a.mu.Unlock()
	a.log.Warn(msg, append(attrs, "source", sourceName(key), "reason", reason)...)
}

// flush logs the failures from key held back over the last period, and
// forgets key after a quiet period.
func (a *authLog) flush(key netip.Addr) {
	a.mu.Lock()
	e := a.sources[key]
	if e == nil || a.closed {
		a.mu.Unlock()
		return
	}
	unlogged := e.unlogged
	if len(unlogged) == 0 {
		delete(a.sources, key) // quiet: its next failure is logged in full
		a.mu.Unlock()
		return
	}
	e.unlogged = map[string]int64{}
	e.timer.Reset(a.every)
	a.mu.Unlock()
	a.summary(key, unlogged)
}

// summary logs one line for the failures held back from key.
func (a *authLog) summary(key netip.Addr, unlogged map[string]int64) {
	var n int64
	attrs := []any{"source", sourceName(key)}
	for _, r := range slices.Sorted(maps.Keys(unlogged)) {
		n += unlogged[r]
		attrs = append(attrs, r, unlogged[r])
	}
	a.log.Warn("more failed authentications", append(attrs, "failures", n, "period", a.every)...)
}

// close stops the timers and logs what is held back.
func (a *authLog) close() {
	a.mu.Lock()
	a.closed = true
	held := map[netip.Addr]map[string]int64{}
	for key, e := range a.sources {
		e.timer.Stop()
		if len(e.unlogged) > 0 {
			held[key] = e.unlogged
		}
	}
	clear(a.sources)
	a.mu.Unlock()
	for key, unlogged := range held {
		a.summary(key, unlogged)
	}
}

// counts returns the failures by reason, and their total.
func (a *authLog) counts() (map[string]int64, int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var n int64
	for _, c := range a.byReason {
		n += c
	}
	return maps.Clone(a.byReason), n
}

func sourceName(a netip.Addr) string {
	if !a.IsValid() {
		return "other sources"
	}
	return a.String()
}
