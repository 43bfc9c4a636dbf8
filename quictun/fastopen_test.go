package quictun

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

func fastOpen(c *ClientConfig) { c.FastOpen = true }

// TestFastOpenFailures: Dial succeeds at once; the first Read reports
// what coordinator answered, as Dial does without fast open.
func TestFastOpenFailures(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	tests := []struct {
		name      string
		serverMod func(*ServerConfig)
		target    string
		code      ErrorCode
	}{
		{name: "target unreachable", target: dead, code: CodeTargetUnreachable},
		{name: "target forbidden", target: "127.0.0.1:9", code: CodeTargetForbidden,
			serverMod: func(c *ServerConfig) {
				c.DialTarget = func(context.Context, string, string) (net.Conn, error) {
					return nil, fmt.Errorf("%w: not on the list", ErrTargetForbidden)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{clientMod: fastOpen, serverMod: tt.serverMod})
			conn, err := h.client.Dial(t.Context(), tt.target)
			if err != nil {
				t.Fatalf("Dial = %v; a fast open fails on Read", err)
			}
			defer conn.Close()
			conn.Write([]byte("GET / HTTP/1.1\r\n\r\n")) // goes nowhere, harmlessly
			_, err = conn.Read(make([]byte, 10))
			var se *SessionError
			if !errors.As(err, &se) || se.Code != tt.code || se.Reason == "" {
				t.Fatalf("Read = %v, want SessionError with %v and a reason", err, tt.code)
			}
			if _, err2 := conn.Peek(make([]byte, 1)); !errors.Is(err2, err) {
				t.Errorf("Peek after the failure = %v, want the same error", err2)
			}
			if st := h.client.Stats(); st.Sessions != 0 {
				t.Errorf("client counted %d sessions for a failed open", st.Sessions)
			}
		})
	}
}

func TestFastOpenSilentCoordinator(t *testing.T) {
	h := newHarness(t, harnessOpts{clientMod: func(c *ClientConfig) {
		c.FastOpen = true
		c.SilenceTimeout = 300 * time.Millisecond
		c.OpenTimeout = time.Minute
	}})
	target := echoServer(t, "127.0.0.1")
	sc, err := h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatal(err)
	}
	sc.Close()
	h.serverTr.Conn.Close()
	time.Sleep(200 * time.Millisecond) // see TestSilentCoordinatorIsGivenUp
	sc, err = h.client.Dial(t.Context(), target)
	if err != nil {
		t.Fatalf("Dial = %v; a fast open fails on Read", err)
	}
	defer sc.Close()
	_, err = sc.Read(make([]byte, 1))
	if !errors.Is(err, ErrCoordinatorUnavailable) || !strings.Contains(err.Error(), "stopped answering") {
		t.Fatalf("Read = %v, want ErrCoordinatorUnavailable saying coordinator stopped answering", err)
	}
}

func TestFastOpenSlowTarget(t *testing.T) {
	// Slower than SilenceTimeout, within OpenTimeout: the session works.
	h := newHarness(t, harnessOpts{
		clientMod: func(c *ClientConfig) { c.FastOpen = true; c.SilenceTimeout = 100 * time.Millisecond },
		serverMod: func(c *ServerConfig) {
			c.DialTarget = slowDialer(time.Second)
		},
	})
	sc, err := h.client.Dial(t.Context(), echoServer(t, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	sc.Write([]byte("late"))
	sc.CloseWrite()
	if got, err := io.ReadAll(sc); err != nil || string(got) != "late" {
		t.Fatalf("read %q, %v through a slow target", got, err)
	}
}

func TestFastOpenAnswerTimeout(t *testing.T) {
	// A target dial that outlasts OpenTimeout fails the session with
	// CodeTimeout, like Dial's wait for OpenResult.
	h := newHarness(t, harnessOpts{
		clientMod: func(c *ClientConfig) { c.FastOpen = true; c.OpenTimeout = 300 * time.Millisecond },
		serverMod: func(c *ServerConfig) {
			c.DialTarget = func(ctx context.Context, network, addr string) (net.Conn, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			c.TargetDialTimeout = 3 * time.Second
		},
	})
	sc, err := h.client.Dial(t.Context(), "127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	_, err = sc.Read(make([]byte, 1))
	var se *SessionError
	if !errors.As(err, &se) || se.Code != CodeTimeout {
		t.Fatalf("Read = %v, want SessionError with CodeTimeout", err)
	}
}

// TestFastOpenRefusedByOlderCoordinator: a coordinator from before
// FastOpen refuses the unknown message type the way it refuses any, by
// resetting the stream with CodeProtocol; the session's error says what to
// do about it.
func TestFastOpenRefusedByOlderCoordinator(t *testing.T) {
	serverTr := newTransport(t, "127.0.0.1")
	ln, err := serverTr.Listen(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{getPKI(t).cert}, NextProtos: []string{ALPNControl},
	}, QUICConfig(100, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		conn, err := ln.Accept(t.Context())
		if err != nil {
			return
		}
		defer conn.CloseWithError(0, "")
		ctrl, err := conn.AcceptStream(t.Context())
		if err != nil {
			return
		}
		if _, err := ReadFrame(ctrl); err != nil {
			return
		}
		WriteFrame(ctrl, &Welcome{Version: ProtocolVersion, ObservedAddr: conn.RemoteAddr().(*net.UDPAddr).AddrPort()})
		for {
			str, err := conn.AcceptStream(t.Context())
			if err != nil {
				return
			}
			str.CancelRead(quic.StreamErrorCode(CodeProtocol)) // an unknown message type
			str.CancelWrite(quic.StreamErrorCode(CodeProtocol))
		}
	}()

	clientTr := newTransport(t, "127.0.0.1")
	c, err := NewClient(ClientConfig{
		Transport: clientTr, Coordinator: serverTr.Conn.LocalAddr().String(), Token: "t",
		RootCAs: getPKI(t).pool, ServerName: "localhost", FastOpen: true,
		PublicAddr: clientTr.Conn.LocalAddr().(*net.UDPAddr).AddrPort(), ConnectTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	defer func() { cancel(); <-ran; ln.Close(); <-served }()

	conn, err := c.Dial(t.Context(), "127.0.0.1:9")
	if err != nil {
		t.Fatalf("Dial = %v; a fast open fails on Read", err)
	}
	defer conn.Close()
	_, err = conn.Read(make([]byte, 1))
	var se *SessionError
	if !errors.As(err, &se) || se.Code != CodeProtocol || !strings.Contains(se.Reason, "fast open off") {
		t.Fatalf("Read = %v, want a SessionError saying to update coordinator or turn fast open off", err)
	}
}
