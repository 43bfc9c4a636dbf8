package service

import (
	"errors"
	"testing"
)

func TestCheckListenAddr(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{":3478", true},
		{"127.0.0.1:0", true},
		{"[::1]:443", true},
		{"[fe80::1%eth0]:80", true},
		{"localhost:http", true},
		{"host.example:8080", true},
		{"bogus", false},
		{"127.0.0.1", false},
		{":99999", false},
		{":-1", false},
		{"[::1:80", false},
		{"no host:80", false},
		{"a/b:80", false},
		{"-a:80", false},
	} {
		err := CheckListenAddr("--listen", tt.addr)
		if (err == nil) != tt.ok {
			t.Errorf("CheckListenAddr(%q) = %v, want ok %v", tt.addr, err, tt.ok)
		}
		if se, isSetting := errors.AsType[*SettingError](err); err != nil && (!isSetting || se.Setting != "--listen" || se.Value != tt.addr) {
			t.Errorf("CheckListenAddr(%q) = %#v, want a *SettingError naming --listen and the value", tt.addr, err)
		}
	}
	for _, tt := range []struct {
		host string
		ok   bool
	}{{"", true}, {"0.0.0.0", true}, {"::", true}, {"localhost", true}, {"127.0.0.1:80", false}, {"a b", false}} {
		if err := CheckHost("--public-bind", tt.host); (err == nil) != tt.ok {
			t.Errorf("CheckHost(%q) = %v, want ok %v", tt.host, err, tt.ok)
		}
	}
}
