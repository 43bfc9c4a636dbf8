package localproxy

import (
	"errors"
	"slices"
	"testing"

	"quictunnel/quictun"
)

func TestParseCoordinators(t *testing.T) {
	tests := []struct {
		quic, tcp string
		want      []quictun.Node
		field     string // of the ConfigError; "" for none
	}{
		{quic: "coord.example:443", want: []quictun.Node{{Addr: "coord.example:443"}}},
		{quic: "a:1,b:2, [::1]:3", want: []quictun.Node{{Addr: "a:1"}, {Addr: "b:2"}, {Addr: "[::1]:3"}}},
		{quic: "a:1,b:2", tcp: "a:443,b:443", want: []quictun.Node{{Addr: "a:1", TCP: "a:443"}, {Addr: "b:2", TCP: "b:443"}}},
		{quic: "", field: "Coordinator"},
		{quic: " ", field: "Coordinator"},
		{quic: "a:1,", field: "Coordinator"},
		{quic: "a", field: "Coordinator"},
		{quic: ":1", field: "Coordinator"},
		{quic: "a:", field: "Coordinator"},
		{quic: "a:1,a:1", field: "Coordinator"},
		{quic: "a:1,b:2", tcp: "a:443", field: "CoordinatorTCP"},
		{quic: "a:1", tcp: "bogus", field: "CoordinatorTCP"},
		{quic: "a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9,j:10,k:11,l:12,m:13,n:14,o:15,p:16,q:17", field: "Coordinator"},
	}
	for _, tt := range tests {
		got, err := ParseCoordinators(tt.quic, tt.tcp)
		if tt.field != "" {
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tt.field {
				t.Errorf("ParseCoordinators(%q, %q) = %v, %v; want a %s error", tt.quic, tt.tcp, got, err, tt.field)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseCoordinators(%q, %q) = %v, %v; want %v", tt.quic, tt.tcp, got, err, tt.want)
		}
	}
}

// FuzzParseCoordinators: what parses formats back to a list that parses
// to the same nodes.
func FuzzParseCoordinators(f *testing.F) {
	f.Add("a:1,b:2", "")
	f.Add("[::1]:443, 127.0.0.1:443", "[::1]:444,127.0.0.1:444")
	f.Add("a:1,,b:2", "x")
	f.Fuzz(func(t *testing.T, quic, tcp string) {
		nodes, err := ParseCoordinators(quic, tcp)
		if err != nil {
			return
		}
		if len(nodes) == 0 || len(nodes) > maxCoordinators {
			t.Fatalf("ParseCoordinators(%q, %q) gave %d nodes", quic, tcp, len(nodes))
		}
		q, tc := formatCoordinators(nodes)
		again, err := ParseCoordinators(q, tc)
		if err != nil || !slices.Equal(again, nodes) {
			t.Fatalf("round trip of %v via %q, %q: %v, %v", nodes, q, tc, again, err)
		}
	})
}
