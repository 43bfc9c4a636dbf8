package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"quictunnel/httpproxy"
	"quictunnel/natt"
	"quictunnel/quictun"
)

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// AddTunnelServer registers coordinator's tunnel metrics.
func (r *Registry) AddTunnelServer(s *quictun.Server) {
	st := func() quictun.ServerStats { return s.Stats() }
	r.Gauge("clients_connected", "Authenticated localproxy clients connected now.", func() float64 { return float64(st().Clients) })
	r.LabeledCounter("auth_failures_total", "Connections refused before authenticating, by reason.", "reason",
		quictun.AuthReasons, func() map[string]int64 { return st().AuthFailuresByReason })
	r.Gauge("handshakes_pending", "Connections not yet authenticated now.", func() float64 { return float64(st().Handshakes) })
	r.Counter("handshake_retries_total", "Connection attempts asked to prove their address with a QUIC Retry.", func() float64 { return float64(st().HandshakeRetries) })
	r.Counter("sessions_total", "Forward sessions established.", func() float64 { return float64(st().Sessions) })
	r.Gauge("sessions_active", "Forward sessions open now.", func() float64 { return float64(st().ActiveSessions) })
	r.Counter("dialback_sessions_total", "Sessions carried over a dial-back connection.", func() float64 { return float64(st().DialBackSessions) })
	r.Counter("relay_sessions_total", "Sessions relayed over the client's own connection.", func() float64 { return float64(st().RelaySessions) })
	r.Counter("fast_open_sessions_total", "Sessions a client opened with fast open, carried over its own connection.", func() float64 { return float64(st().FastOpenSessions) })
	r.Counter("target_errors_total", "Targets that could not be reached.", func() float64 { return float64(st().TargetErrors) })
	r.Counter("targets_forbidden_total", "Sessions refused by policy: target not allowed, or token barred from the forward proxy.", func() float64 { return float64(st().TargetsForbidden) })
	r.Counter("dialback_errors_total", "Sessions failed for want of a dial-back.", func() float64 { return float64(st().DialBackErrors) })
	r.Counter("dialback_dials_total", "Dial-back connections coordinator attempted itself.", func() float64 { return float64(st().DialBackDials) })
	r.Counter("session_bytes_up_total", "Bytes from clients to targets.", func() float64 { return float64(st().BytesUp) })
	r.Counter("session_bytes_down_total", "Bytes from targets to clients.", func() float64 { return float64(st().BytesDown) })
	r.Histogram("session_setup_seconds", "Time from a client's Open to its session being ready (target dialed, dial-back or relay up).",
		func() quictun.HistogramSnapshot { return st().SetupLatency })
	r.Histogram("dialback_seconds", "Time to get an acknowledged dial-back stream, for sessions carried over dial-back.",
		func() quictun.HistogramSnapshot { return st().DialBackLatency })
	r.Gauge("dialback_workers_connected", "Dial-back workers connected now.", func() float64 { return float64(st().Workers) })
	r.Gauge("dialback_workers_draining", "Dial-back workers connected but taking no more clients (stopping).", func() float64 { return float64(st().WorkersDraining) })
	r.LabeledCounter("limit_hits_total", "Sessions, clients or connection attempts refused because a limit was hit, by limit.", "limit",
		[]string{quictun.LimitSessionsPerClient, quictun.LimitClients, quictun.LimitHandshakes, quictun.LimitHandshakesPerSource},
		func() map[string]int64 { return st().LimitHits })
}

// AddDialBackWorker registers a dial-back worker's metrics.
func (r *Registry) AddDialBackWorker(w *quictun.Worker) {
	st := func() quictun.WorkerStats { return w.Stats() }
	r.Gauge("coordinator_connected", "1 while the connection to coordinator is up.", func() float64 { return b2f(st().Connected) })
	r.Counter("jobs_total", "Sessions handed over by coordinator.", func() float64 { return float64(st().Jobs) })
	r.Gauge("sessions_active", "Sessions open now.", func() float64 { return float64(st().ActiveSessions) })
	r.Counter("dialback_sessions_total", "Sessions carried over a dial-back connection.", func() float64 { return float64(st().DialBackSessions) })
	r.Counter("relay_sessions_total", "Sessions relayed through coordinator.", func() float64 { return float64(st().RelaySessions) })
	r.Counter("dialback_errors_total", "Dial-backs that failed (the session was relayed).", func() float64 { return float64(st().DialBackErrors) })
	r.Counter("target_errors_total", "Targets that could not be reached.", func() float64 { return float64(st().TargetErrors) })
	r.Counter("punches_total", "Punch packets received from clients.", func() float64 { return float64(st().Punches) })
	r.Counter("session_bytes_up_total", "Bytes from clients to targets.", func() float64 { return float64(st().BytesUp) })
	r.Counter("session_bytes_down_total", "Bytes from targets to clients.", func() float64 { return float64(st().BytesDown) })
}

// AddTunnelClient registers localproxy's tunnel metrics.
func (r *Registry) AddTunnelClient(c *quictun.Client) {
	st := func() quictun.ClientStats { return c.Stats() }
	r.Gauge("coordinator_connected", "1 while the control connection to coordinator is up.", func() float64 { return b2f(st().Connected) })
	r.Counter("coordinator_connects_total", "Control connections established.", func() float64 { return float64(st().Connects) })
	r.Counter("coordinator_failovers_total", "Control connections established to another coordinator than the one before (--coordinator A,B,C).",
		func() float64 { return float64(st().Failovers) })
	r.Info("coordinator_node", "1 with the address of the coordinator the control connection is up to.", "node",
		func() string {
			if s := st(); s.Connected {
				return s.Coordinator
			}
			return ""
		})
	for _, tr := range []string{quictun.TransportQUIC, quictun.TransportTCP} {
		r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: "coordinator_transport",
			Help:        "1 for the transport the control connection to coordinator is up on (quic, or tcp where QUIC failed or was not chosen).",
			ConstLabels: prometheus.Labels{"transport": tr}},
			func() float64 { s := st(); return b2f(s.Connected && s.Transport == tr) }))
	}
	r.Counter("sessions_total", "Sessions established.", func() float64 { return float64(st().Sessions) })
	r.Counter("relay_sessions_total", "Sessions relayed over the control connection.", func() float64 { return float64(st().RelaySessions) })
	r.Counter("fast_open_sessions_total", "Sessions opened with fast open (carried over the control connection).", func() float64 { return float64(st().FastOpenSessions) })
	r.Gauge("sessions_pending", "Sessions waiting for their dial-back.", func() float64 { return float64(st().PendingSessions) })
	r.Gauge("reverse_sessions_active", "Public connections to exposed apps (reverse sessions) open now.",
		func() float64 { return float64(st().ReverseSessions) })
	r.Counter("dialback_timeouts_total", "Sessions whose dial-back did not arrive in time.", func() float64 { return float64(st().DialBackTimeouts) })
	r.Counter("unknown_sessions_total", "Dial-back streams refused for an unknown or expired session id.", func() float64 { return float64(st().UnknownSessions) })
	r.Histogram("session_setup_seconds", "Time from a browser's request for a session to the session being ready.",
		func() quictun.HistogramSnapshot { return st().SetupLatency })
	r.Counter("punches_total", "Sessions that punched the NAT towards a dial-back worker.", func() float64 { return float64(st().Punches) })
	r.Counter("public_address_changes_total", "Changes of the public address the reporter reports (a NAT that mapped localproxy anew, a new uplink).",
		func() float64 { return float64(st().PublicAddrChanges) })
	r.Counter("dialback_connections_closed_total", "Dial-back connections closed because the NAT mapping they came through was gone.",
		func() float64 { return float64(st().DialBacksClosed) })
	r.LabeledCounter("limit_hits_total", "Sessions or dial-back connection attempts refused because a limit was hit, by limit.", "limit",
		[]string{quictun.LimitPendingSessions, quictun.LimitHandshakes, quictun.LimitHandshakesPerSource},
		func() map[string]int64 { return st().LimitHits })
	r.Gauge("handshakes_pending", "Dial-back connections not yet authenticated now.", func() float64 { return float64(st().Handshakes) })
	r.Counter("handshake_retries_total", "Dial-back connection attempts asked to prove their address with a QUIC Retry.",
		func() float64 { return float64(st().HandshakeRetries) })
	r.Gauge("exposed_services", "Services published through coordinator.", func() float64 {
		n := 0
		for _, reg := range c.Registrations() {
			if reg.Err == nil {
				n++
			}
		}
		return float64(n)
	})
}

// AddHTTP registers an HTTP proxy's metrics, names prefixed by prefix
// ("proxy" for the browser side, "public" for exposed apps).
func (r *Registry) AddHTTP(prefix string, stats func() httpproxy.Stats) {
	r.Counter(prefix+"_requests_total", "HTTP requests and CONNECT tunnels received.", func() float64 { return float64(stats().Requests) })
	r.Counter(prefix+"_tunnels_total", "CONNECT tunnels.", func() float64 { return float64(stats().Tunnels) })
	r.Gauge(prefix+"_connections_active", "Client connections open now.", func() float64 { return float64(stats().ActiveConns) })
	r.Counter(prefix+"_connection_limit_waits_total", "Times accepting a connection waited for another to close (connection limit).",
		func() float64 { return float64(stats().ConnLimitWaits) })
	r.Counter(prefix+"_bytes_up_total", "Bytes from clients.", func() float64 { return float64(stats().BytesUp) })
	r.Counter(prefix+"_bytes_down_total", "Bytes to clients.", func() float64 { return float64(stats().BytesDown) })
	r.Counter(prefix+"_errors_total", "Responses with a 4xx or 5xx status.", func() float64 {
		var n int64
		for code, c := range stats().ByStatus {
			if code >= 400 {
				n += c
			}
		}
		return float64(n)
	})
}

// AddReporter registers the STUN reporter's metrics.
func (r *Registry) AddReporter(s *natt.Server) {
	st := func() natt.ServerStats { return s.Stats() }
	r.Counter("stun_requests_total", "STUN Binding requests answered.", func() float64 { return float64(st().Requests) })
	r.Gauge("stun_kept_alive_clients", "Clients being kept alive now.", func() float64 { return float64(st().KeptAlive) })
	r.Counter("stun_pings_total", "Keepalive pings sent.", func() float64 { return float64(st().Pings) })
	r.Counter("stun_forgotten_total", "Clients forgotten after missing pings.", func() float64 { return float64(st().Forgotten) })
	r.Counter("stun_keepalive_refused_total", "Keepalive requests refused: the most clients (10000) kept alive already.",
		func() float64 { return float64(st().Refused) })
	r.Counter("stun_dropped_total", "Requests dropped: malformed or over the rate limit.", func() float64 { return float64(st().Dropped) })
}
