package quictun

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// requestLogQueue bounds the records waiting for a client's request-log
// stream; beyond it records are dropped, so a slow client never holds up
// the requests themselves.
const requestLogQueue = 1024

// requestLogBatch is how many bytes of records go out in one stream write
// at most.
const requestLogBatch = 16 << 10

// requestLog sends RequestLog records to one client on a unidirectional
// stream of its control connection (flow step 8). The stream is opened
// with the first record; a client that takes no unidirectional streams (an
// older one) turns the log off for the connection.
type requestLog struct {
	conn    Conn
	log     *slog.Logger
	records chan *RequestLog
	off     atomic.Bool
	dropped atomic.Int64
}

func newRequestLog(conn Conn, log *slog.Logger) *requestLog {
	return &requestLog{conn: conn, log: log, records: make(chan *RequestLog, requestLogQueue)}
}

// add queues m for the client without ever blocking.
func (l *requestLog) add(m *RequestLog) {
	if l.off.Load() {
		return
	}
	select {
	case l.records <- m:
	default:
		l.dropped.Add(1)
	}
}

// run writes the queued records until ctx ends, the connection ends or
// the client turns out to take none.
func (l *requestLog) run(ctx context.Context) {
	defer func() {
		l.off.Store(true)
		if n := l.dropped.Load(); n > 0 {
			l.log.Warn("request log records not sent to the client: it read them too slowly", "dropped", n)
		}
	}()
	var str SendStream
	var buf []byte // made with the stream: most clients take no request log
	for {
		var m *RequestLog
		select {
		case <-ctx.Done():
			return
		case <-l.conn.Context().Done():
			return
		case m = <-l.records:
		}
		if str == nil {
			s, err := l.conn.OpenUniStream()
			if err != nil { // a client that did not ask for it (or an older one) allows none
				l.log.Debug("client takes no request log", "err", err)
				return
			}
			str = s
			defer str.CancelWrite(quic.StreamErrorCode(CodeCanceled))
			buf = make([]byte, 0, requestLogBatch+MaxFrameSize+3)
		}
		buf = l.batch(buf[:0], m)
		str.SetWriteDeadline(time.Now().Add(requestLogWriteTimeout))
		if _, err := str.Write(buf); err != nil {
			l.log.Debug("request log stream failed", "err", err)
			return
		}
	}
}

// requestLogWriteTimeout gives up on a client that reads nothing of its
// request log for this long (records queue and drop meanwhile).
const requestLogWriteTimeout = time.Minute

// batch appends m and whatever else is queued, up to requestLogBatch
// bytes, as frames.
func (l *requestLog) batch(b []byte, m *RequestLog) []byte {
	for {
		if nb, err := AppendFrame(b, m); err == nil {
			b = nb
		}
		if len(b) >= requestLogBatch {
			return b
		}
		select {
		case m = <-l.records:
		default:
			return b
		}
	}
}
