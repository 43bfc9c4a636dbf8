package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMakeInstall runs make install PREFIX=DIR, as README's "Running it for
// real" does, and checks every binary lands in DIR/bin stamped with the
// checkout's commit.
func TestMakeInstall(t *testing.T) {
	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make not installed")
	}
	prefix, build := t.TempDir(), t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, makeBin, "-C", "..", "install", "PREFIX="+prefix, "BIN="+build).CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	commit := ""
	if out, err := exec.CommandContext(ctx, "git", "rev-parse", "HEAD").Output(); err == nil {
		commit = strings.TrimSpace(string(out)) // else the checkout is not a git one
	}
	for _, name := range []string{"coordinator", "localproxy", "reporter", "demoapp"} {
		bin := filepath.Join(prefix, "bin", name)
		if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s not installed as an executable: %v", bin, err)
			continue
		}
		out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), name+" version ") || !strings.Contains(string(out), " commit "+commit) {
			t.Errorf("%s --version: %v, %q; want the commit %s", bin, err, out, commit)
		}
	}
}
