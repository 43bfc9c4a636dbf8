package quictun

import (
	"log/slog"
	"maps"
	"sync"
	"time"
)

// Names of the limits counted in ServerStats.LimitHits and
// ClientStats.LimitHits; the metrics use them as the "limit" label.
const (
	// LimitSessionsPerClient is ServerConfig.MaxSessionsPerClient.
	LimitSessionsPerClient = "sessions_per_client"
	// LimitClients is ServerConfig.MaxClients.
	LimitClients = "clients"
	// LimitPendingSessions is ClientConfig.MaxPendingSessions.
	LimitPendingSessions = "pending_sessions"
	// LimitHandshakes is HandshakeLimits.Max.
	LimitHandshakes = "handshakes"
	// LimitHandshakesPerSource is HandshakeLimits.MaxPerSource.
	LimitHandshakesPerSource = "handshakes_per_source"
)

// limitLogEvery is the least time between two warnings about one limit.
const limitLogEvery = 5 * time.Second

// limitHits counts the times each limit was hit and logs them, at most one
// warning per limit per limitLogEvery (with the number of hits not logged
// since), so a client hammering a limit cannot flood the log.
type limitHits struct {
	mu       sync.Mutex
	hits     map[string]int64
	lastLog  map[string]time.Time
	unlogged map[string]int64
}

// hit counts one hit of limit and logs msg with attrs unless a warning
// about limit was logged less than limitLogEvery ago.
func (l *limitHits) hit(log *slog.Logger, limit, msg string, attrs ...any) {
	now := time.Now()
	l.mu.Lock()
	if l.hits == nil {
		l.hits, l.lastLog, l.unlogged = map[string]int64{}, map[string]time.Time{}, map[string]int64{}
	}
	l.hits[limit]++
	if now.Sub(l.lastLog[limit]) < limitLogEvery {
		l.unlogged[limit]++
		l.mu.Unlock()
		return
	}
	suppressed := l.unlogged[limit]
	l.lastLog[limit], l.unlogged[limit] = now, 0
	l.mu.Unlock()
	attrs = append(attrs, "limit", limit)
	if suppressed > 0 {
		attrs = append(attrs, "hits_not_logged", suppressed)
	}
	log.Warn(msg, attrs...)
}

// snapshot returns a copy of the counts; limits never hit are absent.
func (l *limitHits) snapshot() map[string]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.hits)
}
