package service

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
	"github.com/urfave/cli/v2/altsrc"
)

func testApp(got *string) App {
	return App{
		Name: "svc",
		Flags: []cli.Flag{
			altsrc.NewStringFlag(&cli.StringFlag{Name: "listen", Value: "default", EnvVars: []string{"SVC_LISTEN"}}),
		},
		Run: func(_ context.Context, c *cli.Context, _ *slog.Logger) error {
			*got = c.String("listen")
			return nil
		},
	}
}

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "svc.yaml")
	os.WriteFile(cfg, []byte("listen: from-config\n"), 0o600)
	tests := []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"default", nil, "", "default"},
		{"config", []string{"--config", cfg}, "", "from-config"},
		{"env beats config", []string{"--config", cfg}, "from-env", "from-env"},
		{"flag beats env", []string{"--config", cfg, "--listen", "from-flag"}, "from-env", "from-flag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.env != "" {
				t.Setenv("SVC_LISTEN", tt.env)
			}
			var got string
			var stderr bytes.Buffer
			if code := MainContext(t.Context(), testApp(&got), append([]string{"svc"}, tt.args...), &stderr); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			if got != tt.want {
				t.Fatalf("listen = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestBadSettings(t *testing.T) {
	for _, args := range [][]string{
		{"svc", "--log-format", "xml"},
		{"svc", "--log-level", "loud"},
		{"svc", "--config", "/nonexistent.yaml"},
		{"svc", "--no-such-flag"},
	} {
		var got string
		var stderr bytes.Buffer
		if code := MainContext(t.Context(), testApp(&got), args, &stderr); code != 2 || stderr.Len() == 0 {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, stderr.String())
		}
	}
}

func TestListenErrorsSayWhatToDo(t *testing.T) {
	pc, err := ListenUDP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_, err = ListenUDP(pc.LocalAddr().String())
	if err == nil || !strings.Contains(err.Error(), "port in use") {
		t.Fatalf("ListenUDP on a busy port = %v", err)
	}
}

func TestAccessLogToFile(t *testing.T) {
	var stderr bytes.Buffer
	log, _ := NewLogger(&stderr, "text", "info")
	path := filepath.Join(t.TempDir(), "access.log")
	acc, closeFn, err := AccessLogger(log, path, "json")
	if err != nil {
		t.Fatal(err)
	}
	acc.Info("request", "target", "example.test:443")
	closeFn()
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"target":"example.test:443"`) || !strings.Contains(stderr.String(), "target=example.test:443") {
		t.Fatalf("file %q stderr %q", b, stderr.String())
	}
}
