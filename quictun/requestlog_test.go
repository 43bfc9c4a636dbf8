package quictun

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// quicPair connects a QUIC client that accepts clientUni unidirectional
// streams (-1: none) to a server on loopback and returns the server's
// and the client's side of the connection.
func quicPair(t *testing.T, clientUni int64) (server, client *quic.Conn) {
	t.Helper()
	cert := newTestCA(t, "request log test").issue(t, "server", "localhost")
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"test"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	client, err = quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"test"}},
		&quic.Config{MaxIncomingUniStreams: clientUni})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.CloseWithError(0, "") })
	if server, err = ln.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.CloseWithError(0, "") })
	return server, client
}

func TestRequestLog(t *testing.T) {
	server, client := quicPair(t, 1)
	l := newRequestLog(wrapQUIC(server), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { l.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var want []*RequestLog
	for i := range 300 { // more than one batch
		m := &RequestLog{Session: NewSessionID(), Service: "app", Remote: netip.MustParseAddrPort("[2001:db8::1]:40000"),
			Method: "GET", Target: fmt.Sprintf("/page/%d?q=1", i), Status: 200, Up: uint64(i), Down: 1 << 40,
			Duration: time.Duration(i) * time.Millisecond, TLS: i%2 == 0, Outcome: "ok"}
		want = append(want, m)
		l.add(m)
	}
	str, err := client.AcceptUniStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	str.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i, w := range want {
		got, err := ReadFrame(str)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, w) {
			t.Fatalf("record %d = %+v, want %+v", i, got, w)
		}
	}
	if n := l.dropped.Load(); n != 0 {
		t.Errorf("%d records dropped", n)
	}
}

// TestRequestLogOlderClient: a client that takes no unidirectional
// streams (one older than the request log) gets none; the log turns
// itself off and adding records neither blocks nor fails.
func TestRequestLogOlderClient(t *testing.T) {
	server, client := quicPair(t, -1)
	l := newRequestLog(wrapQUIC(server), slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() { l.run(t.Context()); close(done) }()
	l.add(&RequestLog{Method: "GET", Target: "/"})
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the request log kept running for a client that takes no unidirectional streams")
	}
	if !l.off.Load() {
		t.Error("the request log is not off")
	}
	for range 2 * requestLogQueue {
		l.add(&RequestLog{Method: "GET", Target: "/"})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := client.AcceptUniStream(ctx); err == nil {
		t.Error("the client got a stream")
	}
	if err := client.Context().Err(); err != nil {
		t.Errorf("the connection ended: %v", err)
	}
}

// TestRequestLogDrops: records beyond the queue are dropped and counted,
// never waited for.
func TestRequestLogDrops(t *testing.T) {
	server, _ := quicPair(t, 1)
	l := newRequestLog(wrapQUIC(server), slog.New(slog.DiscardHandler)) // not running: nothing drains the queue
	for range requestLogQueue + 5 {
		l.add(&RequestLog{Method: "GET", Target: "/"})
	}
	if n := l.dropped.Load(); n != 5 {
		t.Errorf("dropped %d, want 5", n)
	}
}
