package localproxy

import (
	"context"
	"errors"
	"fmt"
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
