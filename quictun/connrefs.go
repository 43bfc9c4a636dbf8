package quictun

import "github.com/quic-go/quic-go"

// connRefs counts the sessions on each dial-back connection to one client,
// so that a retired connection (the client's address changed) is closed
// when its last session ends, not under its sessions. Its owner's mutex
// guards it; the zero value is ready to use.
type connRefs struct {
	n       map[*quic.Conn]int
	retired map[*quic.Conn]bool
}

// add counts one more session on c.
func (r *connRefs) add(c *quic.Conn) {
	if r.n == nil {
		r.n = make(map[*quic.Conn]int)
	}
	r.n[c]++
}

// done ends one session's use of c and reports whether c, retired and now
// without sessions, is to be closed.
func (r *connRefs) done(c *quic.Conn) bool {
	r.n[c]--
	if r.n[c] > 0 {
		return false
	}
	delete(r.n, c)
	if r.retired[c] {
		delete(r.retired, c)
		return true
	}
	return false
}

// retire marks c retired and reports whether it is to be closed now, having
// no session.
func (r *connRefs) retire(c *quic.Conn) bool {
	if r.n[c] == 0 {
		return true
	}
	if r.retired == nil {
		r.retired = make(map[*quic.Conn]bool)
	}
	r.retired[c] = true
	return false
}

// takeRetired returns the retired connections and forgets them.
func (r *connRefs) takeRetired() []*quic.Conn {
	conns := make([]*quic.Conn, 0, len(r.retired))
	for c := range r.retired {
		conns = append(conns, c)
	}
	clear(r.retired)
	return conns
}
