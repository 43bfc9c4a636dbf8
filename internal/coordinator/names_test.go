package coordinator

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"quictunnel/quictun"
)

// TestStateFile: the holds written are read back; a hold whose owner was
// online when coordinator stopped starts its grace period when read; one
// whose grace is over is dropped; a bad file is an error, a missing one an
// empty state; no temporary file is left behind.
func TestStateFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "names.json")
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	const grace = 10 * time.Minute
	alice, bob := ownerKey("abcd/alice"), ownerKey("cert/bob")
	st := stateFile{Version: stateVersion,
		Names: map[string]hold{"app": {Owner: alice}, "old": {Owner: bob, Left: now.Add(-grace)}, "api": {Owner: bob, Left: now.Add(-time.Minute)}},
		Ports: map[uint16]hold{20001: {Owner: alice, Name: "db"}},
	}
	if err := writeState(path, st); err != nil {
		t.Fatal(err)
	}
	names, ports, err := readState(path, now, grace)
	if err != nil {
		t.Fatal(err)
	}
	if h := names["app"]; h == nil || h.Owner != alice || !h.Left.Equal(now) {
		t.Errorf("app = %+v, want alice's, left now", h)
	}
	if h := names["api"]; h == nil || h.Owner != bob || !h.Left.Equal(now.Add(-time.Minute)) {
		t.Errorf("api = %+v, want bob's, left a minute ago", h)
	}
	if _, ok := names["old"]; ok {
		t.Error("a name whose grace is over was kept")
	}
	if h := ports[20001]; h == nil || h.Owner != alice || h.Name != "db" {
		t.Errorf("port 20001 = %+v, want alice's db", h)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d files, want only the state file", len(entries))
	}
	b, _ := os.ReadFile(path)
	if strings.Contains(string(b), "alice") || strings.Contains(string(b), "abcd") {
		t.Errorf("the state file names its owners:\n%s", b)
	}

	if names, _, err := readState(filepath.Join(dir, "none.json"), now, grace); err != nil || len(names) != 0 {
		t.Errorf("missing file: %v, %v; want an empty state", names, err)
	}
	for _, bad := range []string{"{", `{"version":2}`} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, _, err := readState(path, now, grace); err == nil {
			t.Errorf("state file %q read without an error", bad)
		}
	}
}

// TestOnePortTwoServices: a client that asks for one public port for two
// services on its connection gets the second refused with the reason,
// and the first keeps the port (it used to lose it to the second).
func TestOnePortTwoServices(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "certs")
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "coordinator.pem"), filepath.Join(dir, "coordinator-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	base := uint16(20000 + rand.IntN(500)*20)
	c, err := New(Config{Listen: "127.0.0.1:0", Certificate: cert, Token: "secret-token-0123456789",
		PortRange: PortRange{base, base + 19}, PublicBind: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	dctx, dcancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer dcancel()
	conn, err := quic.DialAddr(dctx, c.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{quictun.ALPNControl}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	ctrl, err := conn.OpenStreamSync(dctx)
	if err != nil {
		t.Fatal(err)
	}
	quictun.WriteFrame(ctrl, &quictun.Hello{Version: quictun.ProtocolVersion, Token: "secret-token-0123456789", ClientName: "one"})
	if msg, err := quictun.ReadFrame(ctrl); err != nil {
		t.Fatalf("welcome: %v", err)
	} else if _, ok := msg.(*quictun.Welcome); !ok {
		t.Fatalf("got %T, want Welcome", msg)
	}
	register := func(name string) *quictun.RegisterResult {
		str, err := conn.OpenStreamSync(dctx)
		if err != nil {
			t.Fatal(err)
		}
		defer str.Close()
		quictun.WriteFrame(str, &quictun.Register{Kind: quictun.ServiceTCP, Name: name, Port: base + 1})
		msg, err := quictun.ReadFrame(str)
		if err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		return msg.(*quictun.RegisterResult)
	}
	if r := register("db"); r.Code != quictun.CodeOK || r.Port != base+1 {
		t.Fatalf("db: %+v", r)
	}
	if r := register("cache"); r.Code != quictun.CodeNameTaken || !strings.Contains(r.Reason, `this client's service "db"`) {
		t.Errorf("cache on db's port: %+v, want refused as used by db", r)
	}
	c.registry.mu.Lock()
	p := c.registry.byPort[base+1]
	c.registry.mu.Unlock()
	if p == nil || p.svc.Name != "db" {
		t.Errorf("port %d serves %+v, want db still", base+1, p)
	}
}
