package localproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"quictunnel/httpproxy"
	"quictunnel/quictun"
)

func TestDialErrorStatus(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{&quictun.SessionError{Code: quictun.CodeTargetUnreachable, Reason: "connection refused"}, 502},
		{&quictun.SessionError{Code: quictun.CodeTargetForbidden}, 403},
		{&quictun.SessionError{Code: quictun.CodeTimeout}, 504},
		{&quictun.SessionError{Code: quictun.CodeDialBackFailed}, 504},
		{fmt.Errorf("x: %w", quictun.ErrDialBackTimeout), 504},
		{fmt.Errorf("x: %w", quictun.ErrCoordinatorUnavailable), 503},
		{quictun.ErrTooManySessions, 503},
		{&quictun.SessionError{Code: quictun.CodeLimit, Reason: "this client has 1000 sessions open (max-sessions-per-client)"}, 503},
		{context.DeadlineExceeded, 504},
		{errors.New("other"), 502},
	}
	for _, tt := range tests {
		var de *httpproxy.DialError
		if err := dialError(tt.err); !errors.As(err, &de) || de.Status != tt.want || de.Reason == "" {
			t.Errorf("dialError(%v) = %v, want status %d with a reason", tt.err, err, tt.want)
		}
	}
}

func TestIsLocalhostName(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LocalHost.": true, "app.localhost": true, "a.b.localhost.": true,
		"localhost.example": false, "mylocalhost": false, "127.0.0.1": false, "::1": false, "": false,
	} {
		if got := isLocalhostName(host); got != want {
			t.Errorf("isLocalhostName(%q) = %v, want %v", host, got, want)
		}
	}
}

// TestLocalhostRefusedBeyondLoopback checks that a proxy serving other
// machines does not open this computer's loopback to them.
func TestLocalhostRefusedBeyondLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // something a remote user must not reach
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	_, err = tunnelDialer{loopbackOnly: false}.DialTarget(t.Context(), "admin.localhost:"+port)
	var de *httpproxy.DialError
	if !errors.As(err, &de) || de.Status != 403 || !errors.Is(err, errLocalhostRemote) {
		t.Fatalf("DialTarget = %v, want a 403", err)
	}
}
