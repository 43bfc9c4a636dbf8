package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemoScript runs scripts/demo.sh (what make demo runs) on free ports
// and checks the way its banner says the request went is the way
// coordinator's access log says it went.
func TestDemoScript(t *testing.T) {
	for _, tool := range []string{"curl", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/test-deps.sh --demo installs it)", tool)
		}
	}
	env := []string{"BIN=" + binaries(t), "DEMO_EXIT=1", "TMPDIR=" + t.TempDir()}
	for _, name := range []string{"PROXY_PORT", "APP_PORT", "HTTP_PORT", "HTTPS_PORT"} {
		env = append(env, name+"="+strconv.Itoa(freeTCPPort(t)))
	}
	for _, name := range []string{"COORD_PORT", "STUN_PORT", "PROBE_PORT", "DIALBACK_PORT"} {
		env = append(env, name+"="+strconv.Itoa(freeUDPPort(t)))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join("..", "scripts", "demo.sh"))
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo.sh: %v\n%s", err, out)
	}
	claim := regexp.MustCompile(`A request went (.*)\n\(coordinator's access log: outcome=(.*)\):`).FindSubmatch(out)
	logs := regexp.MustCompile(`Logs \(one line per request/session\): (\S+)`).FindSubmatch(out)
	if claim == nil || logs == nil {
		t.Fatalf("demo.sh does not say which way the request went, from coordinator's log:\n%s", out)
	}
	coordLog, err := os.ReadFile(filepath.Join(string(logs[1]), "coordinator.log"))
	if err != nil {
		t.Fatal(err)
	}
	path, outcome := string(claim[1]), string(claim[2])
	if !strings.Contains(string(coordLog), `msg=session `) || !strings.Contains(string(coordLog), `outcome="`+outcome+`"`) &&
		!strings.Contains(string(coordLog), "outcome="+outcome+"\n") {
		t.Errorf("the banner quotes outcome %q; coordinator's log has no such session:\n%s", outcome, coordLog)
	}
	if viaWorker := strings.Contains(outcome, "via worker"); viaWorker != strings.Contains(path, "dial-back worker ->") {
		t.Errorf("the banner says %q for outcome %q", path, outcome)
	}
	// The demo waits for the worker, so here it takes the worker's path.
	if !strings.Contains(outcome, "via worker") {
		t.Errorf("the request did not go through the dial-back worker (outcome %q):\n%s", outcome, out)
	}
}

// TestDemoDeps checks make demo installs only what scripts/demo.sh uses,
// not the test suite's tools (browsers, coturn, the NAT lab's).
func TestDemoDeps(t *testing.T) {
	// A PATH with none of the tools, so every one counts as missing.
	dir := t.TempDir()
	for _, tool := range []string{"bash", "sort", "id"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Skipf("%s not found", tool)
		}
		if err := os.Symlink(p, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.CommandContext(t.Context(), filepath.Join(dir, "bash"), filepath.Join("..", "scripts", "test-deps.sh"), "--demo", "--dry-run")
	cmd.Env = []string{"PATH=" + dir}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("test-deps.sh --demo --dry-run: %v\n%s", err, out)
	}
	got := strings.Fields(string(out))
	if !slices.Contains(got, "curl") {
		t.Errorf("test-deps.sh --demo would install %q; want curl among them", got)
	}
	for _, pkg := range got {
		if !slices.Contains([]string{"curl", "iproute2", "openssl"}, pkg) {
			t.Errorf("test-deps.sh --demo would install %s, which the demo does not use (all: %q)", pkg, got)
		}
	}

	makeBin, err := exec.LookPath("make")
	if err != nil {
		t.Skip("make not installed")
	}
	out, err = exec.CommandContext(t.Context(), makeBin, "-n", "-C", "..", "demo").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n demo: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "test-deps.sh") && !strings.Contains(line, "--demo") {
			t.Errorf("make demo runs %q: the whole test suite's dependencies", line)
		}
	}
}
