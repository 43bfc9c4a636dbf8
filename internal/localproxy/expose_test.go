package localproxy

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"quictunnel/quictun"
)

func TestParseExpose(t *testing.T) {
	tests := []struct {
		spec string
		kind quictun.ServiceKind
		want quictun.ExposedService
		bad  bool
	}{
		{spec: "app=127.0.0.1:3000", kind: quictun.ServiceHTTP, want: quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app", Local: "127.0.0.1:3000"}},
		{spec: "app=localhost:3000:20001", kind: quictun.ServiceHTTP, want: quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app", Local: "localhost:3000", Port: 20001}},
		{spec: "db=127.0.0.1:5432:0", kind: quictun.ServiceTCP, want: quictun.ExposedService{Kind: quictun.ServiceTCP, Name: "db", Local: "127.0.0.1:5432"}},
		{spec: "db=[::1]:5432:20002", kind: quictun.ServiceTCP, want: quictun.ExposedService{Kind: quictun.ServiceTCP, Name: "db", Local: "[::1]:5432", Port: 20002}},
		{spec: "v6=[::1]:8080", kind: quictun.ServiceHTTP, want: quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "v6", Local: "[::1]:8080"}},
		{spec: "db=127.0.0.1:5432", kind: quictun.ServiceTCP, bad: true},
		{spec: "noequals", kind: quictun.ServiceHTTP, bad: true},
		{spec: "bad_name=127.0.0.1:1", kind: quictun.ServiceHTTP, bad: true},
		{spec: "app=127.0.0.1", kind: quictun.ServiceHTTP, bad: true},
		{spec: "app=127.0.0.1:0", kind: quictun.ServiceHTTP, bad: true},
		{spec: "app=:3000", kind: quictun.ServiceHTTP, bad: true},
		{spec: "db=127.0.0.1:5432:70000", kind: quictun.ServiceTCP, bad: true},
	}
	for _, tt := range tests {
		got, err := ParseExpose(tt.spec, tt.kind)
		if tt.bad {
			if err == nil {
				t.Errorf("ParseExpose(%q) = %+v, want error", tt.spec, got)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseExpose(%q) = %+v, %v; want %+v", tt.spec, got, err, tt.want)
		}
	}
}

func TestApplyHostHeaders(t *testing.T) {
	base := func() []quictun.ExposedService {
		return []quictun.ExposedService{
			{Kind: quictun.ServiceHTTP, Name: "app", Local: "127.0.0.1:3000"},
			{Kind: quictun.ServiceHTTP, Name: "vite", Local: "[::1]:5173"},
			{Kind: quictun.ServiceTCP, Name: "db", Local: "127.0.0.1:5432"},
		}
	}
	tests := []struct {
		specs []string
		want  map[string]string // name → Host header
		bad   bool
	}{
		{specs: nil, want: map[string]string{}},
		{specs: []string{"app=rewrite"}, want: map[string]string{"app": "127.0.0.1:3000"}},
		{specs: []string{"vite=rewrite", "app=localhost:3000"}, want: map[string]string{"vite": "[::1]:5173", "app": "localhost:3000"}},
		{specs: []string{"app=example.test"}, want: map[string]string{"app": "example.test"}},
		{specs: []string{"db=rewrite"}, bad: true},       // TCP
		{specs: []string{"nosuch=rewrite"}, bad: true},   // not exposed
		{specs: []string{"app"}, bad: true},              // no value
		{specs: []string{"app="}, bad: true},             // empty value
		{specs: []string{"app=a b"}, bad: true},          // not a host
		{specs: []string{"app=x", "app=y"}, bad: true},   // twice
		{specs: []string{"app=evil\r\nX: 1"}, bad: true}, // header injection
	}
	for _, tt := range tests {
		svcs := base()
		err := ApplyHostHeaders(svcs, tt.specs)
		if tt.bad {
			if err == nil {
				t.Errorf("ApplyHostHeaders(%q) accepted: %+v", tt.specs, svcs)
			}
			continue
		}
		if err != nil {
			t.Errorf("ApplyHostHeaders(%q): %v", tt.specs, err)
			continue
		}
		for _, s := range svcs {
			if s.HostHeader != tt.want[s.Name] {
				t.Errorf("ApplyHostHeaders(%q): %s has Host header %q, want %q", tt.specs, s.Name, s.HostHeader, tt.want[s.Name])
			}
		}
	}
}

func TestApplyBasicAuth(t *testing.T) {
	for _, tt := range []struct {
		specs []string
		comma bool // the password is "s3cr,et", not "s3cr:et"
		bad   bool
	}{
		{specs: []string{"app=alice:s3cr:et"}},                 // the password may hold ':'
		{specs: []string{"app=alice:s3cr", "et"}, comma: true}, // and ',', which the flag parser cuts at
		{specs: []string{"db=alice:secret"}, bad: true},        // TCP
		{specs: []string{"nosuch=alice:secret"}, bad: true},
		{specs: []string{"app=alice"}, bad: true},
		{specs: []string{"app=:secret"}, bad: true},
		{specs: []string{"app=alice:"}, bad: true},
		{specs: []string{"app=a:b", "app=c:d"}, bad: true},
	} {
		svcs := []quictun.ExposedService{
			{Kind: quictun.ServiceHTTP, Name: "app", Local: "127.0.0.1:3000"},
			{Kind: quictun.ServiceTCP, Name: "db", Local: "127.0.0.1:5432"},
		}
		err := ApplyBasicAuth(svcs, tt.specs)
		switch {
		case tt.bad && err == nil:
			t.Errorf("ApplyBasicAuth(%q) accepted", tt.specs)
		case tt.bad && strings.Contains(err.Error(), "secret"):
			t.Errorf("ApplyBasicAuth(%q): error %q shows the password", tt.specs, err)
		case !tt.bad && err != nil:
			t.Errorf("ApplyBasicAuth(%q): %v", tt.specs, err)
		case !tt.bad && (svcs[0].BasicAuth == nil || *svcs[0].BasicAuth != *quictun.HashCredentials("alice", map[bool]string{false: "s3cr:et", true: "s3cr,et"}[tt.comma])):
			t.Errorf("ApplyBasicAuth(%q): %+v", tt.specs, svcs[0].BasicAuth)
		}
	}
}

func TestApplyAllowFrom(t *testing.T) {
	for _, tt := range []struct {
		specs []string
		want  map[string][]netip.Prefix
		bad   bool
	}{
		{specs: []string{"app=198.51.100.0/24,2001:db8::/32", "db=203.0.113.7"}, want: map[string][]netip.Prefix{
			"app": {netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/32")},
			"db":  {netip.MustParsePrefix("203.0.113.7/32")},
		}},
		{specs: []string{"app=198.51.100.77/24"}, want: map[string][]netip.Prefix{"app": {netip.MustParsePrefix("198.51.100.0/24")}}},
		{specs: []string{"app=not-a-network"}, bad: true},
		{specs: []string{"app=198.51.100.0/24,"}, bad: true},
		{specs: []string{"nosuch=198.51.100.0/24"}, bad: true},
		// The flag parser cuts values at commas; the pieces are put back.
		{specs: []string{"app=198.51.100.0/24", "2001:db8::/32"}, want: map[string][]netip.Prefix{
			"app": {netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/32")},
		}},
		{specs: []string{"app=198.51.100.0/24", "app=203.0.113.0/24"}, want: map[string][]netip.Prefix{
			"app": {netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.0/24")},
		}},
		{specs: []string{"198.51.100.0/24"}, bad: true},
	} {
		svcs := []quictun.ExposedService{
			{Kind: quictun.ServiceHTTP, Name: "app", Local: "127.0.0.1:3000"},
			{Kind: quictun.ServiceTCP, Name: "db", Local: "127.0.0.1:5432"},
		}
		err := ApplyAllowFrom(svcs, tt.specs)
		if tt.bad {
			if err == nil {
				t.Errorf("ApplyAllowFrom(%q) accepted: %+v", tt.specs, svcs)
			}
			continue
		}
		if err != nil {
			t.Errorf("ApplyAllowFrom(%q): %v", tt.specs, err)
			continue
		}
		for _, s := range svcs {
			if !reflect.DeepEqual(s.AllowFrom, tt.want[s.Name]) {
				t.Errorf("ApplyAllowFrom(%q): %s allows %v, want %v", tt.specs, s.Name, s.AllowFrom, tt.want[s.Name])
			}
		}
	}
}

// FuzzParseExpose checks the parser never panics and that what it accepts
// is a valid service.
func FuzzParseExpose(f *testing.F) {
	f.Add("app=127.0.0.1:3000")
	f.Add("db=[::1]:5432:0")
	f.Add("x=[::1]:1:2:3")
	f.Fuzz(func(t *testing.T, spec string) {
		for _, kind := range []quictun.ServiceKind{quictun.ServiceHTTP, quictun.ServiceTCP} {
			svc, err := ParseExpose(spec, kind)
			if err != nil {
				continue
			}
			if !quictun.ValidServiceName(svc.Name) || svc.Local == "" || svc.Kind != kind {
				t.Fatalf("ParseExpose(%q) accepted %+v", spec, svc)
			}
		}
	})
}
