package localproxy

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"quictunnel/internal/inspector"
	"quictunnel/quictun"
)

// Status is localproxy's live state, served as JSON at /status on the
// proxy's own address and printed by `localproxy status`.
type Status struct {
	Proxy string `json:"proxy"`
	// Coordinator is the coordinator connected to (the last one while
	// down; the configured address before the first connection).
	Coordinator string `json:"coordinator"`
	Connected   bool   `json:"connected"`
	// Coordinators is the --coordinator list, when it names several, and
	// Failovers counts the moves from one to another.
	Coordinators string `json:"coordinators,omitempty"`
	Failovers    uint64 `json:"failovers,omitempty"`
	// RTT is the control connection's smoothed round-trip time.
	RTT string `json:"rtt,omitempty"`
	// Transport is how localproxy reaches coordinator: "quic (UDP from
	// ADDR)", "tcp", or "tcp (why)" when auto fell back to it.
	Transport string `json:"transport,omitempty"`
	// PublicAddr is what the reporter told us; ObservedAddr what
	// coordinator sees.
	PublicAddr   string `json:"public_addr,omitempty"`
	ObservedAddr string `json:"observed_addr,omitempty"`
	NATMapping   string `json:"nat_mapping,omitempty"`
	NATFiltering string `json:"nat_filtering,omitempty"`
	// SessionsTotal counts sessions since start, RelaySessions those
	// relayed over the control connection after a failed dial-back,
	// FastOpenSessions those opened with fast open.
	SessionsTotal    uint64          `json:"sessions_total"`
	RelaySessions    uint64          `json:"relay_sessions"`
	FastOpenSessions uint64          `json:"fast_open_sessions"`
	SetupP50         string          `json:"session_setup_p50,omitempty"`
	SetupP99         string          `json:"session_setup_p99,omitempty"`
	Sessions         []SessionStatus `json:"sessions"`
	Services         []ServiceStatus `json:"services,omitempty"`
}

// SessionStatus is one open tunnel session.
type SessionStatus struct {
	ID        string `json:"id"`
	Target    string `json:"target"`
	Age       string `json:"age"`
	BytesUp   int64  `json:"bytes_up"`
	BytesDown int64  `json:"bytes_down"`
}

// ServiceStatus is one exposed local app.
type ServiceStatus struct {
	Name  string `json:"name"`
	Kind  string `json:"kind"`
	Local string `json:"local"`
	// HostHeader is the Host the app's requests get, when rewritten.
	HostHeader string `json:"host_header,omitempty"`
	// BasicAuth says the public must present a user name and password.
	BasicAuth bool `json:"basic_auth,omitempty"`
	// AllowFrom is the networks public clients must come from, if limited.
	AllowFrom []string `json:"allow_from,omitempty"`
	URL       string   `json:"url,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// Status returns the live state.
func (p *Proxy) Status() Status {
	st := p.client.Stats()
	mapping, filtering := p.NAT()
	s := Status{
		Proxy: p.ln.Addr().String(), Coordinator: cmp.Or(st.Coordinator, p.cfg.Coordinator), Connected: st.Connected,
		Failovers:  st.Failovers,
		NATMapping: mapping, NATFiltering: filtering,
		SessionsTotal: st.Sessions, RelaySessions: st.RelaySessions, FastOpenSessions: st.FastOpenSessions,
		Sessions:  p.sessions.list(),
		Transport: transportLine(st, p.udp.LocalAddr().String()),
	}
	if st.Connected {
		s.RTT = st.RTT.Round(10 * time.Microsecond).String()
	}
	if st.Candidates > 1 {
		s.Coordinators = p.cfg.Coordinator
	}
	if st.PublicAddr.IsValid() {
		s.PublicAddr = st.PublicAddr.String()
	}
	if st.ObservedAddr.IsValid() {
		s.ObservedAddr = st.ObservedAddr.String()
	}
	if st.SetupLatency.Count > 0 {
		s.SetupP50 = "≤" + st.SetupLatency.Quantile(0.5).String()
		s.SetupP99 = "≤" + st.SetupLatency.Quantile(0.99).String()
	}
	for _, r := range p.client.Registrations() {
		ss := ServiceStatus{Name: r.Service.Name, Kind: r.Service.Kind.String(), Local: r.Service.Local, HostHeader: r.Service.HostHeader, BasicAuth: r.Service.BasicAuth != nil, URL: r.URL}
		for _, p := range r.Service.AllowFrom {
			ss.AllowFrom = append(ss.AllowFrom, p.String())
		}
		if r.Err != nil {
			ss.Error = r.Err.Error()
		}
		s.Services = append(s.Services, ss)
	}
	return s
}

func (p *Proxy) statusJSON() []byte {
	b, err := json.MarshalIndent(p.Status(), "", "  ")
	if err != nil {
		return []byte(`{"error":"` + err.Error() + `"}`)
	}
	return append(b, '\n')
}

// sessionTracker knows the open tunnel sessions, for Status and the idle
// timer.
type sessionTracker struct {
	mu                   sync.Mutex
	open                 map[*trackedConn]struct{}
	closedUp, closedDown int64 // bytes moved by sessions no longer open
	// changed, if not nil, is signalled when a session opens or closes
	// (the idle timer).
	changed chan struct{}

	ins *inspector.Inspector // records each tunnel (CONNECT) closed; nil: none
}

// notify signals changed without blocking.
func (t *sessionTracker) notify() {
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

func (t *sessionTracker) add(c *trackedConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open == nil {
		t.open = make(map[*trackedConn]struct{})
	}
	t.open[c] = struct{}{}
	t.notify()
}

func (t *sessionTracker) remove(c *trackedConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.open, c)
	t.notify()
	t.closedUp += c.up.Load()
	t.closedDown += c.down.Load()
}

// upDown returns the bytes every session moved so far, each way (up:
// towards the targets).
func (t *sessionTracker) upDown() (up, down int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	up, down = t.closedUp, t.closedDown
	for c := range t.open {
		up += c.up.Load()
		down += c.down.Load()
	}
	return up, down
}

// count returns the number of sessions open.
func (t *sessionTracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.open)
}

// list returns the open sessions, oldest first.
func (t *sessionTracker) list() []SessionStatus {
	t.mu.Lock()
	conns := make([]*trackedConn, 0, len(t.open))
	for c := range t.open {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	slices.SortFunc(conns, func(a, b *trackedConn) int { return a.start.Compare(b.start) })
	out := make([]SessionStatus, 0, len(conns))
	for _, c := range conns {
		out = append(out, SessionStatus{ID: c.SessionID(), Target: c.target, Age: time.Since(c.start).Round(time.Second).String(),
			BytesUp: c.up.Load(), BytesDown: c.down.Load()})
	}
	return out
}

// trackedConn is a tunnel session that counts its bytes and is listed in
// Status while open. Up is towards the target.
type trackedConn struct {
	*quictun.StreamConn
	t        *sessionTracker
	target   string
	start    time.Time
	up, down atomic.Int64
	gone     sync.Once
	reported atomic.Bool // httpproxy reported requests: not a tunnel
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.StreamConn.Read(b)
	c.down.Add(int64(n))
	if err != nil && isOpenFailure(err) {
		// A fast open's answer: the same status a failed Dial gets.
		err = dialError(err)
	}
	return n, err
}

func (c *trackedConn) Write(b []byte) (int, error) {
	n, err := c.StreamConn.Write(b)
	c.up.Add(int64(n))
	return n, err
}

func (c *trackedConn) Close() error {
	c.gone.Do(c.end)
	return c.StreamConn.Close()
}

func (c *trackedConn) Reset() error {
	c.gone.Do(c.end)
	return c.StreamConn.Reset()
}

// transportLine is the control connection's transport, with why auto
// chose TCP, or the UDP address QUIC leaves from.
func transportLine(st quictun.ClientStats, udp string) string {
	switch {
	case st.Transport == quictun.TransportTCP && st.TransportWhy != "":
		return st.Transport + " (" + st.TransportWhy + ")"
	case st.Transport == quictun.TransportTCP:
		return st.Transport
	}
	return quictun.TransportQUIC + " (UDP from " + udp + ")"
}

// stunWaitTCP bounds the wait for the reporter before connecting, when
// the TCP transport may be used: UDP may be blocked.
const stunWaitTCP = 500 * time.Millisecond

// end takes the session off the list and, for a tunnel (CONNECT), records
// it in the inspector.
func (c *trackedConn) end() {
	c.t.remove(c)
	if c.t.ins != nil && !c.reported.Load() {
		c.t.ins.Add(tunnelRecord(c.target, c.start, c.up.Load(), c.down.Load(), c.Transport()))
	}
}

// FormatStatus renders s for a person.
func FormatStatus(s Status) string {
	var b strings.Builder
	state := "connected"
	if !s.Connected {
		state = "NOT connected (retrying)"
	}
	line := func(k, v string) {
		if v != "" {
			b.WriteString(k + strings.Repeat(" ", max(1, 16-len(k))) + v + "\n")
		}
	}
	line("proxy", s.Proxy)
	line("coordinator", s.Coordinator+" — "+state)
	if s.Coordinators != "" {
		line("candidates", s.Coordinators+"; failovers: "+fmtUint(s.Failovers))
	}
	line("transport", s.Transport)
	line("public address", s.PublicAddr)
	line("seen by coord.", s.ObservedAddr)
	line("NAT mapping", s.NATMapping)
	line("NAT filtering", s.NATFiltering)
	sessions := fmtUint(s.SessionsTotal) + " since start, " + fmtUint(s.RelaySessions) + " relayed"
	if s.FastOpenSessions > 0 {
		sessions += ", " + fmtUint(s.FastOpenSessions) + " fast open"
	}
	if s.SetupP50 != "" {
		sessions += "; set-up p50 " + s.SetupP50 + ", p99 " + s.SetupP99
	}
	line("sessions", sessions)
	if len(s.Services) > 0 {
		b.WriteString("\nexposed services:\n")
		for _, svc := range s.Services {
			where := svc.URL
			if svc.Error != "" {
				where = "REFUSED: " + svc.Error
			}
			local := svc.Local
			if svc.HostHeader != "" {
				local += ", Host: " + svc.HostHeader
			}
			if svc.BasicAuth {
				local += ", basic auth"
			}
			if len(svc.AllowFrom) > 0 {
				local += ", from " + strings.Join(svc.AllowFrom, " ")
			}
			b.WriteString("  " + svc.Name + " (" + svc.Kind + ", " + local + ") → " + where + "\n")
		}
	}
	b.WriteString("\nopen sessions: " + fmtUint(uint64(len(s.Sessions))) + "\n")
	for _, ss := range s.Sessions {
		b.WriteString("  " + ss.Target + "  age " + ss.Age + "  up " + fmtBytes(ss.BytesUp) + "  down " + fmtBytes(ss.BytesDown) + "  " + ss.ID + "\n")
	}
	return b.String()
}

func fmtUint(n uint64) string { return strconv.FormatUint(n, 10) }

// fmtBytes renders n bytes with a binary unit.
func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
