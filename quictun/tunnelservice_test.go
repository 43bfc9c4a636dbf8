package quictun

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// TestTunnelServiceListensAgain stops the tunnel creation service's
// listener under a live session: the session goes on, EnsureTunnelService
// has it listen again, and the next dial-back connection gets in (the
// session is dialed back, not relayed).
func TestTunnelServiceListensAgain(t *testing.T) {
	h := newHarness(t, harnessOpts{
		clientMod: func(c *ClientConfig) { c.DialBackTimeout = 2 * time.Second },
		serverMod: func(c *ServerConfig) { c.DialBackTimeout = time.Second },
	})
	target := echoServer(t, "127.0.0.1")
	echo := func(conn io.ReadWriter, msg string) {
		t.Helper()
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: %q, %v", msg, buf, err)
		}
	}
	live, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echo(live, "before")

	h.client.mu.Lock()
	h.client.tunnelLn.Close() // as if it died
	h.client.mu.Unlock()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	// The accept loop notices the close asynchronously: wait for it.
	for {
		h.client.mu.Lock()
		down := h.client.tunnelUp != nil
		h.client.mu.Unlock()
		if down || ctx.Err() != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	if restarted, err := h.client.EnsureTunnelService(ctx); !restarted || err != nil {
		t.Fatalf("EnsureTunnelService = %v, %v; want restarted", restarted, err)
	}
	if took := time.Since(start); took > tunnelRelisten/2 {
		t.Errorf("listening again took %v: EnsureTunnelService should not wait for the retry timer", took)
	}
	if restarted, err := h.client.EnsureTunnelService(ctx); restarted || err != nil {
		t.Fatalf("EnsureTunnelService on a serving service = %v, %v", restarted, err)
	}
	echo(live, "after") // the live session's dial-back connection lives on

	// A new dial-back connection must get in through the new listener:
	// told of another address, coordinator retires the old one (closing
	// it once its session ended) and dials anew.
	live.Close()
	h.client.mu.Lock()
	var old *quic.Conn
	for c := range h.client.dialBacks {
		old = c
	}
	h.client.mu.Unlock()
	if err := h.client.SetPublicAddr(netip.MustParseAddrPort("127.0.0.1:9")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.Context().Done():
	case <-ctx.Done():
		t.Fatal("the old dial-back connection was not closed")
	}
	conn, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo(conn, "new")
	if st := h.server.Stats(); st.DialBackSessions != 2 || st.RelaySessions != 0 {
		t.Fatalf("server stats %+v: want both sessions dialed back", st)
	}
}

// TestAddrUpdateUnchangedKeepsDialBack: localproxy's idle timer tells
// coordinator its public address even when unchanged; coordinator keeps
// the dial-back connection for the next session instead of dialing anew.
func TestAddrUpdateUnchangedKeepsDialBack(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	target := echoServer(t, "127.0.0.1")
	for i := range 3 {
		conn, err := h.client.Dial(t.Context(), target)
		if err != nil {
			t.Fatal(err)
		}
		// An echo: coordinator has counted the session by then.
		var b [1]byte
		if _, err := conn.Write(b[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if i < 2 {
			if err := h.client.SetPublicAddr(h.client.Stats().PublicAddr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if st := h.server.Stats(); st.DialBackDials != 1 || st.DialBackSessions != 3 {
		t.Fatalf("server stats: %d dial-back dials for %d dial-back sessions; want 1 for 3", st.DialBackDials, st.DialBackSessions)
	}
	if n := h.client.Stats().PublicAddrChanges; n != 0 {
		t.Fatalf("%d public address changes counted", n)
	}
}
