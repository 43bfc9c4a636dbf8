package quictun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/internal/relay"
)

// This file is coordinator's side of dial-back workers (worker.go is the
// worker's): workers connect with WorkerHello and take Jobs, so that
// sessions' data flows between the worker and the client, not through
// coordinator.

// workerPeer is one connected dial-back worker.
type workerPeer struct {
	conn     *quic.Conn
	observed netip.AddrPort
	log      *slog.Logger
	draining atomic.Bool // the worker closed its control stream: no new clients for it
}

// serveWorker authenticates a worker's connection and keeps it in the pool
// until it closes.
func (s *Server) serveWorker(ctx context.Context, conn *quic.Conn, log *slog.Logger) {
	src := sourceOf(conn.RemoteAddr())
	msg, ctrl, reason, err := readFirstFrame(ctx, wrapQUIC(conn), s.cfg.HelloTimeout)
	hello, ok := msg.(*WorkerHello)
	if err == nil && !ok {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), "expected worker hello")
		reason, err = AuthBadHello, fmt.Errorf("%w: expected worker hello, got %T", ErrProtocol, msg)
	}
	if err != nil {
		if ctx.Err() == nil {
			s.auth.fail(src, reason, "dial-back worker refused: bad hello", "worker_addr", conn.RemoteAddr(), "err", err)
		}
		return
	}
	if !checkWorkerToken(hello.Token, s.cfg.WorkerToken) {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeUnauthorized), "invalid worker token")
		s.auth.fail(src, AuthInvalidWorkerToken, "dial-back worker refused: invalid worker token", "worker_addr", conn.RemoteAddr())
		return
	}
	if hello.Version != ProtocolVersion {
		conn.CloseWithError(quic.ApplicationErrorCode(CodeVersion), fmt.Sprintf("coordinator speaks version %d", ProtocolVersion))
		return
	}
	authenticated(wrapQUIC(conn))
	w := &workerPeer{conn: conn, log: log}
	if a, ok := conn.RemoteAddr().(interface{ AddrPort() netip.AddrPort }); ok {
		ap := a.AddrPort()
		w.observed = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if err := WriteFrame(ctrl, &Welcome{Version: ProtocolVersion, ObservedAddr: w.observed}); err != nil {
		return
	}
	s.mu.Lock()
	s.workers[w] = 0
	n := len(s.workers)
	s.mu.Unlock()
	log.Info("dial-back worker connected", "advertise", hello.Advertise, "workers", n)
	// The worker sends nothing more on its control stream; closing it
	// (FIN) means it is draining and takes no more jobs.
	ctrl.SetReadDeadline(time.Time{})
	msg, err = ReadFrame(ctrl)
	switch {
	case errors.Is(err, io.EOF):
		w.draining.Store(true)
		log.Info("dial-back worker draining: its clients move to other workers or to coordinator")
	case err == nil:
		conn.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), fmt.Sprintf("unexpected %T on worker control stream", msg))
	}
	<-conn.Context().Done()
	s.mu.Lock()
	delete(s.workers, w)
	s.mu.Unlock()
	log.Info("dial-back worker disconnected", "reason", context.Cause(conn.Context()))
}

// pickWorker returns the worker serving p, choosing the least loaded one
// when p has none (or its worker left); nil when there are no workers.
func (p *peer) pickWorker() *workerPeer {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.worker != nil {
		n, ok := s.workers[p.worker]
		if ok && p.worker.conn.Context().Err() == nil && !p.worker.draining.Load() {
			return p.worker
		}
		if ok && n > 0 {
			s.workers[p.worker] = n - 1
		}
		p.worker = nil
	}
	var best *workerPeer
	for w, n := range s.workers {
		if w.conn.Context().Err() == nil && !w.draining.Load() && (best == nil || n < s.workers[best]) {
			best = w
		}
	}
	if best != nil {
		s.workers[best]++
		p.worker = best
		p.log.Info("client assigned to dial-back worker", "worker", best.conn.RemoteAddr())
	}
	return best
}

func (p *peer) releaseWorker() {
	s := p.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.workers[p.worker]; ok && n > 0 {
		s.workers[p.worker] = n - 1
	}
	p.worker = nil
}

// serveViaWorker hands the session to worker w. It returns false, having
// written nothing to str, when w cannot take it: the caller serves the
// session itself.
func (p *peer) serveViaWorker(ctx context.Context, w *workerPeer, str Stream, open *Open,
	outcome func(string, error, relay.Stats)) bool {
	start := time.Now()
	js, err := w.conn.OpenStreamSync(ctx)
	if err != nil {
		return false
	}
	p.mu.Lock()
	reported := p.publicAddr
	p.mu.Unlock()
	if err := WriteFrame(js, &Job{Session: open.Session, Target: open.Target, CertSHA256: p.certHash,
		Reported: reported, Observed: p.observedAddr()}); err != nil {
		js.CancelWrite(quic.StreamErrorCode(CodeCanceled))
		js.CancelRead(quic.StreamErrorCode(CodeCanceled))
		return false
	}
	jsc := newStreamConn(js, wrapQUIC(w.conn), open.Session)
	abort := func(code ErrorCode) {
		jsc.Reset()
		str.CancelRead(quic.StreamErrorCode(code))
		str.CancelWrite(quic.StreamErrorCode(code))
	}
	js.SetReadDeadline(time.Now().Add(p.s.cfg.TargetDialTimeout + 5*time.Second))
	msg, err := ReadFrame(js)
	res, ok := msg.(*JobResult)
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote && ErrorCode(se.ErrorCode) == CodeShutdown {
		return false // the worker is draining: nothing was written to str yet
	}
	if err != nil || !ok {
		abort(CodeInternal)
		outcome("worker_failed", fmt.Errorf("dial-back worker %s: %w", w.conn.RemoteAddr(), errors.Join(err, ErrProtocol)), relay.Stats{})
		return true
	}
	if err := WriteFrame(str, &OpenResult{Code: res.Code, Reason: res.Reason, PunchTo: res.PunchTo}); err != nil {
		abort(CodeCanceled)
		outcome("client_gone", err, relay.Stats{})
		return true
	}
	if res.Code != CodeOK {
		jsc.Reset()
		str.CancelRead(quic.StreamErrorCode(CodeOK))
		str.Close()
		if res.Code == CodeTargetForbidden {
			p.s.stats.targetsForbidden.Add(1)
			outcome("forbidden", errors.New(res.Reason), relay.Stats{})
			return true
		}
		p.s.stats.targetErrors.Add(1)
		outcome("target_unreachable", errors.New(res.Reason), relay.Stats{})
		return true
	}
	if res.PunchTo.IsValid() {
		// Wait for the client's punch to have left before the worker dials.
		str.SetReadDeadline(time.Now().Add(p.s.cfg.RelayAfter))
		var b [1]byte
		if _, err := io.ReadFull(str, b[:]); err != nil || b[0] != punchedMarker {
			abort(CodeProtocol)
			outcome("client_gone", fmt.Errorf("no punch confirmation: %w", errors.Join(err, ErrProtocol)), relay.Stats{})
			return true
		}
		str.SetReadDeadline(time.Time{})
	}
	js.SetReadDeadline(time.Time{})
	dialBackStart := time.Now()
	if _, err := js.Write([]byte{punchedMarker}); err != nil {
		abort(CodeCanceled)
		outcome("worker_gone", err, relay.Stats{})
		return true
	}
	js.SetReadDeadline(time.Now().Add(2*p.s.cfg.RelayAfter + 5*time.Second))
	var b [1]byte
	_, err = io.ReadFull(js, b[:])
	js.SetReadDeadline(time.Time{})
	switch {
	case err == nil && b[0] == dialBackAck:
		// The worker's dial-back stream carries the session.
		jsc.Close()
		finishOpen(str)
		p.s.stats.sessions.Add(1)
		p.s.stats.dialBackSessions.Add(1)
		p.s.stats.dialBackLatency.Observe(time.Since(dialBackStart))
		p.s.stats.setupLatency.Observe(time.Since(start))
		outcome("ok (dial-back via worker "+w.conn.RemoteAddr().String()+")", nil, relay.Stats{})
		return true
	case err == nil && b[0] == relayMarker:
	default:
		abort(CodeDialBackFailed)
		outcome("worker_failed", fmt.Errorf("dial-back worker %s: %w", w.conn.RemoteAddr(), errors.Join(err, ErrProtocol)), relay.Stats{})
		return true
	}
	// The worker could not dial back: carry the session from the client's
	// Open stream to the worker's Job stream.
	if _, err := str.Write([]byte{relayMarker}); err != nil {
		abort(CodeCanceled)
		outcome("client_gone", err, relay.Stats{})
		return true
	}
	p.s.stats.sessions.Add(1)
	p.s.stats.relaySessions.Add(1)
	p.s.stats.setupLatency.Observe(time.Since(start))
	p.s.stats.activeSessions.Add(1)
	st, err := relay.Splice(ctx, newStreamConn(str, p.conn, open.Session), jsc)
	p.s.stats.activeSessions.Add(-1)
	p.s.stats.bytesUp.Add(st.AToB)
	p.s.stats.bytesDown.Add(st.BToA)
	outcome(Outcome(err)+" (relay via worker "+w.conn.RemoteAddr().String()+")", err, st)
	return true
}
