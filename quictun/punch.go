package quictun

import (
	"crypto/sha256"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v2"
)

// A punch is the packet localproxy sends from its one UDP socket to a
// dial-back worker before the worker dials back: it opens the NAT (and any
// stateful firewall) for packets from exactly that address, and tells the
// worker which public address the NAT gave the socket for it. It is a STUN
// Binding indication (RFC 8489: no answer is expected) with FINGERPRINT,
// so anything on the path parses it as ordinary STUN, and QUIC ignores it.
// Its transaction id is derived from the session id, which itself never
// leaves the encrypted connections.

// punchKey identifies the session a punch belongs to.
type punchKey [stun.TransactionIDSize]byte

func punchKeyOf(id SessionID) punchKey {
	h := sha256.Sum256(append([]byte("quictun punch\x00"), id[:]...))
	var k punchKey
	copy(k[:], h[:])
	return k
}

var punchType = stun.NewType(stun.MethodBinding, stun.ClassIndication)

// punchPacket returns the punch for session id.
func punchPacket(id SessionID) []byte {
	m := stun.MustBuild(punchType, stun.NewTransactionIDSetter(punchKeyOf(id)), stun.Fingerprint)
	return m.Raw
}

// parsePunch returns the key of a punch packet; ok is false for anything
// else.
func parsePunch(b []byte) (punchKey, bool) {
	if !stun.IsMessage(b) {
		return punchKey{}, false
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil || m.Type != punchType || stun.Fingerprint.Check(m) != nil {
		return punchKey{}, false
	}
	return m.TransactionID, true
}

// punchBook remembers where recent punches came from, so a worker can dial
// back to the source its NAT really uses towards it: that works behind any
// NAT, symmetric ones included, and after a stray entry made the NAT pick
// a new port (NAT-NOTES).
type punchBook struct {
	mu      sync.Mutex
	max     int
	ttl     time.Duration
	sources map[punchKey]punchSeen
	arrived chan struct{} // closed and replaced on every new punch
}

type punchSeen struct {
	from netip.AddrPort
	at   time.Time
}

func newPunchBook(max int, ttl time.Duration) *punchBook {
	return &punchBook{max: max, ttl: ttl, sources: make(map[punchKey]punchSeen), arrived: make(chan struct{})}
}

// note records that a punch with key k came from addr.
func (b *punchBook) note(k punchKey, addr netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if len(b.sources) >= b.max {
		for key, s := range b.sources {
			if now.Sub(s.at) > b.ttl {
				delete(b.sources, key)
			}
		}
		if len(b.sources) >= b.max {
			return // flooded: forget nothing good to make room for junk
		}
	}
	if _, ok := b.sources[k]; !ok {
		b.sources[k] = punchSeen{from: addr, at: now}
	}
	close(b.arrived)
	b.arrived = make(chan struct{})
}

// wait returns where the punch with key k came from, waiting up to d for it
// to arrive; the entry is consumed.
func (b *punchBook) wait(k punchKey, d time.Duration) (netip.AddrPort, bool) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		s, ok := b.sources[k]
		if ok {
			delete(b.sources, k)
		}
		arrived := b.arrived
		b.mu.Unlock()
		if ok {
			return s.from, true
		}
		select {
		case <-arrived:
		case <-deadline.C:
			return netip.AddrPort{}, false
		}
	}
}
