package natlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// namePrefix starts the name of every namespace this package creates; the
// full prefix is "qlab-<pid>-<n>-" so that Sweep can tell a crashed run's
// namespaces (dead pid) from a running one's.
const namePrefix = "qlab-"

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// cmdTimeout bounds every command the lab runs itself.
const cmdTimeout = 10 * time.Second

// tools holds the absolute paths of the commands the lab runs.
type tools struct {
	ip, conntrack                     string
	iptables, ip6tables               string
	iptablesRestore, ip6tablesRestore string
}

// sbinDirs are searched after $PATH: a non-login root shell may lack them.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: command %q not found", ErrUnavailable, name)
}

// findTools checks that this process may build a lab and finds the commands.
func findTools() (tools, error) {
	if os.Geteuid() != 0 {
		return tools{}, fmt.Errorf("%w: not running as root", ErrUnavailable)
	}
	var t tools
	var errs []error
	for _, x := range []struct {
		dst  *string
		name string
	}{
		{&t.ip, "ip"}, {&t.conntrack, "conntrack"},
		{&t.iptables, "iptables"}, {&t.ip6tables, "ip6tables"},
		{&t.iptablesRestore, "iptables-restore"}, {&t.ip6tablesRestore, "ip6tables-restore"},
	} {
		p, err := lookTool(x.name)
		*x.dst = p
		errs = append(errs, err)
	}
	return t, errors.Join(errs...)
}

// run runs a command with a bounded time and returns its standard output;
// the error carries standard error.
func run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "),
			err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// ipn runs `ip -n ns args...`.
func (t tools) ipn(ctx context.Context, ns string, args ...string) error {
	_, err := run(ctx, "", t.ip, append([]string{"-n", ns}, args...)...)
	return err
}

// execIn runs a command inside ns with `ip netns exec`.
func (t tools) execIn(ctx context.Context, ns, stdin, name string, args ...string) (string, error) {
	return run(ctx, stdin, t.ip, append([]string{"netns", "exec", ns, name}, args...)...)
}

// listNS returns the names of all named network namespaces.
func listNS() ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// removeNS kills the processes inside ns, deletes its links and then the
// namespace. Killing first matters: a process (or an open socket) keeps an
// unnamed namespace and its links alive after `ip netns del`.
func (t tools) removeNS(ctx context.Context, ns string) error {
	if !strings.HasPrefix(ns, namePrefix) {
		return fmt.Errorf("remove namespace %q: not a natlab namespace", ns)
	}
	if _, err := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var errs []error
	if out, err := run(ctx, "", t.ip, "netns", "pids", ns); err != nil {
		errs = append(errs, err)
	} else {
		for f := range strings.FieldsSeq(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if out, err := run(ctx, "", t.ip, "-n", ns, "-o", "link", "show"); err == nil {
		for _, name := range linkNames(out) {
			// A veth's peer may already be gone with its other end.
			_ = t.ipn(ctx, ns, "link", "del", "dev", name)
		}
	}
	if _, err := run(ctx, "", t.ip, "netns", "del", ns); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		if _, serr := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(serr, fs.ErrNotExist) {
			return nil // another process (a parallel Sweep) removed it first
		}
		return fmt.Errorf("remove namespace %s: %w", ns, err)
	}
	return nil
}

// linkNames parses `ip -o link show`, leaving out lo.
func linkNames(out string) []string {
	var names []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		// "3: eth0@if2: <BROADCAST,..." -> "eth0"
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if name != "lo" && name != "" {
			names = append(names, name)
		}
	}
	return names
}

// Sweep removes the namespaces that earlier, crashed runs of this package
// left behind: those named "qlab-<pid>-..." whose process no longer exists.
// Namespaces of running processes (parallel test binaries) are kept. New
// calls Sweep once per process.
func Sweep() error {
	t, err := findTools()
	if err != nil {
		return err
	}
	names, err := listNS()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var errs []error
	for _, ns := range names {
		if !stale(ns) {
			continue
		}
		if err := t.removeNS(ctx, ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// stale reports whether ns is a natlab namespace whose creator is gone.
func stale(ns string) bool {
	rest, ok := strings.CutPrefix(ns, namePrefix)
	if !ok {
		return false
	}
	pidStr, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	if !ok || err != nil || pid <= 0 {
		return false
	}
	if pid == os.Getpid() {
		return false
	}
	err = syscall.Kill(pid, 0)
	return errors.Is(err, syscall.ESRCH)
}

// inNS runs fn on a fresh OS thread that has joined the network namespace
// ns. Sockets fn creates belong to ns for their whole life (a socket keeps
// the namespace it was created in), so they may then be used from any
// goroutine. The thread is never unlocked: when the goroutine ends locked,
// the Go runtime terminates the thread instead of handing it, still in the
// lab's namespace, to other goroutines. So nothing else ever runs in ns by
// accident, even if fn panics or switching back would have failed. fn must
// not start goroutines that create sockets: they run on other threads, in
// the root namespace.
func inNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread, see above.
		errc <- joinAndRun(ns, fn)
	}()
	return <-errc
}

func joinAndRun(ns string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("in namespace %s: panic: %v", ns, r)
		}
	}()
	f, err := os.Open(filepath.Join(netnsDir, ns))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter namespace %s: %w", ns, err)
	}
	return fn()
}

// sysctlPath maps "net.ipv4.ip_forward" to its /proc/sys file. /proc/sys/net
// shows the network namespace of the thread that reads it.
func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// setSysctls writes key=value pairs (in order) inside ns.
func setSysctls(ns string, kv ...string) error {
	return inNS(ns, func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			if err := os.WriteFile(sysctlPath(kv[i]), []byte(kv[i+1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", kv[i], kv[i+1], ns, err)
			}
		}
		return nil
	})
}

// getSysctl reads key inside ns.
func getSysctl(ns, key string) (string, error) {
	var v string
	err := inNS(ns, func() error {
		b, err := os.ReadFile(sysctlPath(key))
		if err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", key, ns, err)
		}
		v = strings.TrimSpace(string(b))
		return nil
	})
	return v, err
}

// setOptionalSysctls is setSysctls that skips keys the namespace lacks (a
// module that is not loaded).
func setOptionalSysctls(ns string, kv ...string) error {
	return inNS(ns, func() error {
		for i := 0; i+1 < len(kv); i += 2 {
			err := os.WriteFile(sysctlPath(kv[i]), []byte(kv[i+1]), 0o644)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("sysctl %s=%s in %s: %w", kv[i], kv[i+1], ns, err)
			}
		}
		return nil
	})
}
