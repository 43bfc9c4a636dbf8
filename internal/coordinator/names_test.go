package coordinator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
