package quictun

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestQlogTraces: with QlogDir set, each end writes a qlog trace of each of
// its QUIC connections (control and dial-back), complete once the
// connection closes.
func TestQlogTraces(t *testing.T) {
	clientDir, serverDir := t.TempDir(), t.TempDir()
	t.Cleanup(func() { // runs after the harness has stopped both ends
		for dir, want := range map[string][]string{
			clientDir: {"_client.sqlog", "_server.sqlog"}, // control connection, dial-back connection
			serverDir: {"_server.sqlog", "_client.sqlog"},
		} {
			files, err := filepath.Glob(filepath.Join(dir, "*.sqlog"))
			if err != nil {
				t.Fatal(err)
			}
			for _, suffix := range want {
				i := slices.IndexFunc(files, func(f string) bool { return strings.HasSuffix(f, suffix) })
				if i < 0 {
					t.Errorf("%s: no *%s among %v", dir, suffix, files)
					continue
				}
				b, err := os.ReadFile(files[i])
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range []string{`"qlog_format":"JSON-SEQ"`, `"transport:packet_sent"`, `"transport:packet_received"`} {
					if !strings.Contains(string(b), s) {
						t.Errorf("%s lacks %s (%d bytes)", files[i], s, len(b))
					}
				}
			}
		}
	})
	h := newHarness(t, harnessOpts{
		serverMod: func(c *ServerConfig) { c.QlogDir = serverDir },
		clientMod: func(c *ClientConfig) { c.QlogDir = clientDir },
	})
	echoRoundTrip(t, h.client, echoServer(t, "127.0.0.1"), []byte("traced"))
}
