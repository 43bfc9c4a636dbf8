package quictun

import (
	"crypto/rand"
	"encoding/hex"
	"sync"

	"github.com/quic-go/quic-go"
)

// SessionIDSize is the length of a session id: 128 random bits, so an id
// cannot be guessed by someone who did not see the control connection.
const SessionIDSize = 16

// SessionID names one tunnel session.
type SessionID [SessionIDSize]byte

// NewSessionID returns a fresh random session id.
func NewSessionID() SessionID {
	var id SessionID
	rand.Read(id[:]) // never returns an error (crypto/rand docs)
	return id
}

func (id SessionID) String() string { return hex.EncodeToString(id[:]) }

// dialBack is a dial-back stream with the connection it arrived on.
type dialBack struct {
	stream Stream
	conn   *quic.Conn
}

// refuse resets the stream with code, both ways.
func (d dialBack) refuse(code ErrorCode) {
	d.stream.CancelRead(quic.StreamErrorCode(code))
	d.stream.CancelWrite(quic.StreamErrorCode(code))
}

// sessionTable holds the sessions waiting for their dial-back stream. An
// entry lives from Open until its stream arrives or the wait is abandoned.
type sessionTable struct {
	mu      sync.Mutex
	max     int
	pending map[SessionID]chan dialBack
}

func newSessionTable(max int) *sessionTable {
	return &sessionTable{max: max, pending: make(map[SessionID]chan dialBack)}
}

// add registers id and returns the channel its stream will be delivered on.
func (t *sessionTable) add(id SessionID) (chan dialBack, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.pending) >= t.max {
		return nil, ErrTooManySessions
	}
	ch := make(chan dialBack, 1)
	t.pending[id] = ch
	return ch, nil
}

// remove forgets id. A stream delivered in the meantime is returned (with
// true) so the caller can refuse it.
func (t *sessionTable) remove(id SessionID) (dialBack, bool) {
	t.mu.Lock()
	ch, ok := t.pending[id]
	delete(t.pending, id)
	t.mu.Unlock()
	if !ok {
		return dialBack{}, false
	}
	select {
	case d := <-ch:
		return d, true
	default:
		return dialBack{}, false
	}
}

// deliver hands s to the session waiting for id. It reports false when no
// session waits for id.
func (t *sessionTable) deliver(id SessionID, d dialBack) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch, ok := t.pending[id]
	if !ok {
		return false
	}
	delete(t.pending, id)
	ch <- d // buffered, and each id is delivered at most once
	return true
}

// len returns the number of waiting sessions.
func (t *sessionTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}
