package coordinator

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultDNSCacheTTL is how long coordinator reuses the addresses a target
// name resolved to: Firefox's and Chrome's own host caches keep names 60s.
const DefaultDNSCacheTTL = time.Minute

// maxCachedHosts bounds the host cache; when it is full, expired entries
// are dropped, and if none has expired, the whole cache.
const maxCachedHosts = 10000

// hostCache remembers the addresses target names resolved to. A browser
// that uses a proxy resolves nothing itself and Go's resolver keeps
// nothing, so without it every new session would wait for a DNS answer.
// Concurrent lookups of one name are already merged by net.Resolver.
type hostCache struct {
	resolver *net.Resolver // nil: the default
	ttl      time.Duration // <= 0: nothing is kept
	now      func() time.Time

	hits, lookups atomic.Int64 // names answered from the cache, and by the resolver

	mu      sync.Mutex
	entries map[string]hostEntry
}

type hostEntry struct {
	addrs   []netip.Addr
	expires time.Time
}

func newHostCache(ttl time.Duration) *hostCache {
	return &hostCache{ttl: ttl, now: time.Now, entries: map[string]hostEntry{}}
}

// lookup returns host's addresses, from the cache if it has them (cached
// true) or from the resolver.
func (h *hostCache) lookup(ctx context.Context, host string) (addrs []netip.Addr, cached bool, err error) {
	if h.ttl > 0 {
		h.mu.Lock()
		e, ok := h.entries[host]
		h.mu.Unlock()
		if ok && h.now().Before(e.expires) {
			h.hits.Add(1)
			return e.addrs, true, nil
		}
	}
	h.lookups.Add(1)
	addrs, err = h.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, false, err
	}
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	if h.ttl > 0 {
		h.store(host, addrs)
	}
	return addrs, false, nil
}

func (h *hostCache) store(host string, addrs []netip.Addr) {
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.entries) >= maxCachedHosts {
		for name, e := range h.entries {
			if !now.Before(e.expires) {
				delete(h.entries, name)
			}
		}
		if len(h.entries) >= maxCachedHosts {
			clear(h.entries)
		}
	}
	h.entries[host] = hostEntry{addrs: addrs, expires: now.Add(h.ttl)}
}

// counts returns the names answered from the cache and by the resolver,
// for metrics.
func (h *hostCache) counts() map[string]int64 {
	return map[string]int64{"cache": h.hits.Load(), "dns": h.lookups.Load()}
}

// forget drops host, whose cached addresses did not answer.
func (h *hostCache) forget(host string) {
	h.mu.Lock()
	delete(h.entries, host)
	h.mu.Unlock()
}

// fallbackDelay is how long the first address family has before the
// other is tried in parallel, as net.Dialer's default.
const fallbackDelay = 300 * time.Millisecond

// dialAddrs connects to the first of addrs (one port) that answers, the
// way net.Dialer dials a name: the addresses of the first one's family in
// turn, each given a share of the time left, and from fallbackDelay on
// those of the other family in parallel (Happy Eyeballs, RFC 8305). The
// error is the first family's first.
func dialAddrs(ctx context.Context, d *net.Dialer, addrs []netip.Addr, port uint16) (net.Conn, error) {
	otherFamily := func(a netip.Addr) bool { return a.Is4() != addrs[0].Is4() }
	if !slices.ContainsFunc(addrs, otherFamily) {
		return dialSerial(ctx, d, addrs, port)
	}
	var primary, fallback []netip.Addr
	for _, a := range addrs {
		if otherFamily(a) {
			fallback = append(fallback, a)
		} else {
			primary = append(primary, a)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		conn    net.Conn
		err     error
		primary bool
	}
	results := make(chan result)
	returned := make(chan struct{})
	defer close(returned)
	race := func(addrs []netip.Addr, primary bool) {
		conn, err := dialSerial(ctx, d, addrs, port)
		select {
		case results <- result{conn, err, primary}:
		case <-returned:
			if conn != nil {
				conn.Close() // the other family won
			}
		}
	}
	go race(primary, true)
	timer := time.NewTimer(fallbackDelay)
	defer timer.Stop()
	var primaryErr, fallbackErr error
	fallbackStarted := false
	for {
		select {
		case <-timer.C:
			if !fallbackStarted {
				fallbackStarted = true
				go race(fallback, false)
			}
		case r := <-results:
			if r.err == nil {
				return r.conn, nil
			}
			if r.primary {
				primaryErr = r.err
			} else {
				fallbackErr = r.err
			}
			switch {
			case !fallbackStarted:
				fallbackStarted = true
				timer.Stop()
				go race(fallback, false)
			case primaryErr != nil && fallbackErr != nil:
				return nil, primaryErr
			}
		}
	}
}

// dialSerial tries addrs in turn. Each gets the time left divided by the
// addresses left, but at least 2s (or all that is left), as in net.Dialer.
func dialSerial(ctx context.Context, d *net.Dialer, addrs []netip.Addr, port uint16) (net.Conn, error) {
	var firstErr error
	for i, a := range addrs {
		if err := ctx.Err(); err != nil {
			if firstErr == nil {
				firstErr = err
			}
			break
		}
		actx := ctx
		if deadline, ok := ctx.Deadline(); ok && i < len(addrs)-1 { // the last one gets all that is left
			left := time.Until(deadline)
			share := left / time.Duration(len(addrs)-i)
			if share < 2*time.Second {
				share = min(2*time.Second, left)
			}
			var cancel context.CancelFunc
			actx, cancel = context.WithTimeout(ctx, share)
			defer cancel()
		}
		conn, err := d.DialContext(actx, "tcp", netip.AddrPortFrom(a, port).String())
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}
