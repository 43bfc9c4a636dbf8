package coordinator

import (
	"fmt"
	"testing"
)

func TestParseTrustedProxies(t *testing.T) {
	tests := []struct {
		specs []string
		want  string // fmt of the prefixes; "" with an error
	}{
		{[]string{"10.0.0.0/8,127.0.0.1", " 2001:db8::1 "}, "[10.0.0.0/8 127.0.0.1/32 2001:db8::1/128]"},
		{[]string{"10.1.2.3/8"}, "[10.0.0.0/8]"},
		{[]string{"::ffff:203.0.113.0/120"}, "[203.0.113.0/24]"},
		{[]string{"", ","}, "[]"},
		{[]string{"::ffff:0:0/80"}, ""}, // would trust every IPv4 peer
		{[]string{"example.com"}, ""},
		{[]string{"10.0.0.0/33"}, ""},
		{[]string{"fe80::1%eth0"}, ""},
	}
	for _, tt := range tests {
		got, err := ParseTrustedProxies(tt.specs)
		if tt.want == "" {
			if err == nil {
				t.Errorf("ParseTrustedProxies(%q) = %v, want an error", tt.specs, got)
			}
			continue
		}
		if err != nil || fmt.Sprint(got) != tt.want {
			t.Errorf("ParseTrustedProxies(%q) = %v, %v; want %s", tt.specs, got, err, tt.want)
		}
	}
}

// FuzzParseTrustedProxies checks that what parses comes out masked,
// unmapped and valid, and parses again to the same prefixes.
func FuzzParseTrustedProxies(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8,127.0.0.1", "::ffff:1.2.3.4/120", "2001:db8::/32, 203.0.113.9", "fe80::1%lo", ",,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		ps, err := ParseTrustedProxies([]string{spec})
		if err != nil {
			return
		}
		var again []string
		for _, p := range ps {
			if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
				t.Fatalf("ParseTrustedProxies(%q) gave %v", spec, p)
			}
			again = append(again, p.String())
		}
		ps2, err := ParseTrustedProxies(again)
		if err != nil || fmt.Sprint(ps2) != fmt.Sprint(ps) {
			t.Fatalf("reparsing %v: %v, %v", again, ps2, err)
		}
	})
}
