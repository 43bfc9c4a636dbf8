package localproxy

import (
	"strings"
	"testing"

	"quictunnel/quictun"
)

func TestStatusShowsTransport(t *testing.T) {
	for _, tc := range []struct {
		st   quictun.ClientStats
		want string
	}{
		{quictun.ClientStats{Connected: true, Transport: "quic"}, "transport       quic (UDP from [::]:4000)\n"},
		{quictun.ClientStats{Connected: true, Transport: "tcp"}, "transport       tcp\n"},
		{quictun.ClientStats{Connected: true, Transport: "tcp", TransportWhy: "no QUIC handshake within 2s (UDP blocked?)"},
			"transport       tcp (no QUIC handshake within 2s (UDP blocked?))\n"},
	} {
		s := Status{Coordinator: "c:4433", Connected: true, Transport: transportLine(tc.st, "[::]:4000")}
		if got := FormatStatus(s); !strings.Contains(got, tc.want) {
			t.Errorf("FormatStatus:\n%s\nwant a line %q", got, tc.want)
		}
	}
}
