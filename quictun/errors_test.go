package quictun

import (
	"fmt"
	"io"
	"syscall"
	"testing"

	"github.com/quic-go/quic-go"
)

func TestOutcome(t *testing.T) {
	reset := func(code ErrorCode, remote bool) error {
		return fmt.Errorf("relay: %w", &quic.StreamError{StreamID: 4, ErrorCode: quic.StreamErrorCode(code), Remote: remote})
	}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"clean end", nil, "ok"},
		{"peer abandoned the session", reset(CodeCanceled, true), "canceled"},
		{"we abandoned it", reset(CodeCanceled, false), "error"},
		{"peer reset for another reason", reset(CodeTimeout, true), "error"},
		{"target reset the connection", fmt.Errorf("read: %w", syscall.ECONNRESET), "error"},
		{"short transfer", io.ErrUnexpectedEOF, "error"},
	} {
		if got := Outcome(tc.err); got != tc.want {
			t.Errorf("%s: Outcome(%v) = %q, want %q", tc.name, tc.err, got, tc.want)
		}
	}
}
