package dnshook

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/goleak"
	"golang.org/x/net/dns/dnsmessage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// challenge is a DNS-01 challenge for domain.
func challenge(domain string) acme.Challenge {
	return acme.Challenge{Type: acme.ChallengeTypeDNS01, KeyAuthorization: "token.thumbprint",
		Identifier: acme.Identifier{Type: "dns", Value: domain}}
}

// writeHook writes an executable shell script into a directory of the
// test's.
func writeHook(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hook")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestHook runs real hook scripts: what they are called with, and what
// their exit codes and timeouts become.
func TestHook(t *testing.T) {
	chal := challenge("example.org")
	fqdn, value := "_acme-challenge.example.org.", chal.DNS01KeyAuthorization()
	for _, tc := range []struct {
		name    string
		script  string
		cleanup bool
		timeout time.Duration
		wantErr error    // nil: success
		wantIn  []string // in the error
	}{
		{name: "present succeeds", script: `[ "$1 $2 $3" = "present ` + fqdn + ` ` + value + `" ] || { echo "args: $*" >&2; exit 9; }`},
		{name: "cleanup succeeds", cleanup: true, script: `[ "$1 $2 $3" = "cleanup ` + fqdn + ` ` + value + `" ] || { echo "args: $*" >&2; exit 9; }`},
		{name: "environment", script: `[ "$ACME_DNS_ACTION $ACME_DNS_FQDN $ACME_DNS_VALUE $ACME_DNS_DOMAIN" = "present ` + fqdn + ` ` + value + ` example.org" ] || { env >&2; exit 9; }`},
		{name: "exit 1 with stderr", script: "echo partial output\necho 'zone example.org: REFUSED' >&2\nexit 1",
			wantErr: &HookError{}, wantIn: []string{"present " + fqdn, "exit status 1", "stderr: zone example.org: REFUSED"}},
		{name: "exit 42 silent", cleanup: true, script: "exit 42", wantErr: &HookError{}, wantIn: []string{"cleanup " + fqdn, "exit status 42"}},
		{name: "timeout kills its children", script: "sleep 30 &\nwait", timeout: 200 * time.Millisecond,
			wantErr: ErrTimeout, wantIn: []string{"killed after 200ms", "timed out"}},
		{name: "long stderr keeps its end", script: "i=0; while [ $i -lt 300 ]; do echo line $i >&2; i=$((i+1)); done; exit 1",
			wantErr: &HookError{}, wantIn: []string{"...", "line 299"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeHook(t, tc.script)
			s, err := New(Config{Path: path, Timeout: tc.timeout})
			if err != nil {
				t.Fatal(err)
			}
			call := s.Present
			if tc.cleanup {
				call = s.CleanUp
			}
			err = call(t.Context(), chal)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			he, ok := errors.AsType[*HookError](err)
			if !ok {
				t.Fatalf("err = %v (%T), want a *HookError", err, err)
			}
			if he.Path != path {
				t.Errorf("HookError.Path = %q, want %q", he.Path, path)
			}
			if errors.Is(tc.wantErr, ErrTimeout) && !errors.Is(err, ErrTimeout) {
				t.Errorf("err = %v, want ErrTimeout", err)
			}
			for _, want := range tc.wantIn {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err = %q, want it to say %q", err, want)
				}
			}
			if len(he.Stderr) > maxStderr+3 {
				t.Errorf("stderr kept: %d bytes, want at most %d", len(he.Stderr), maxStderr+3)
			}
		})
	}
}

// TestTimeoutKillsChildren: at the timeout the hook's children die with
// it (a script's curl or nsupdate), and the call returns without waiting
// for them.
func TestTimeoutKillsChildren(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	s, err := New(Config{Path: writeHook(t, "sleep 60 &\necho $! >'"+pidFile+"'\nwait"), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Present(t.Context(), challenge("example.org")); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Present = %v, want ErrTimeout", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	// Gone, or a zombie waiting for a parent that does not reap.
	waitUntil(t, "the hook's child killed", func() bool {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		return err != nil || strings.Contains(string(stat), ") Z ")
	})
}

// waitUntil polls cond for at most 10 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestCleanUpAfterCancel: the record is removed even when the order's
// context has ended.
func TestCleanUpAfterCancel(t *testing.T) {
	done := filepath.Join(t.TempDir(), "done")
	s, err := New(Config{Path: writeHook(t, "sleep 0.2; touch '"+done+"'")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.CleanUp(ctx, challenge("example.org")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(done); err != nil {
		t.Errorf("the hook did not run to its end: %v", err)
	}
}

// TestConfig checks New's validation, and CheckPath's (check-config's).
func TestConfig(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hook := writeHook(t, "exit 0")
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string // "" for valid
		want  string
	}{
		{"valid", Config{Path: hook, Resolvers: []string{"127.0.0.1", "ns1.example.org", "[::1]:5353", "::1"}}, "", ""},
		{"no path", Config{}, "Path", "required"},
		{"missing", Config{Path: filepath.Join(dir, "nothing")}, "Path", "no such file"},
		{"directory", Config{Path: dir}, "Path", "not a regular file"},
		{"not executable", Config{Path: plain}, "Path", "not executable"},
		{"negative timeout", Config{Path: hook, Timeout: -time.Second}, "Timeout", "negative"},
		{"bad resolver", Config{Path: hook, Resolvers: []string{"http://ns1"}}, "Resolvers", "want host or host:port"},
		{"bad resolver port", Config{Path: hook, Resolvers: []string{"ns1:dns"}}, "Resolvers", "want host or host:port"},
		{"empty resolver", Config{Path: hook, Resolvers: []string{""}}, "Resolvers", "want host or host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.cfg)
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range s.cfg.Resolvers {
					if _, _, err := net.SplitHostPort(r); err != nil {
						t.Errorf("resolver %q has no port", r)
					}
				}
				return
			}
			ce, ok := errors.AsType[*ConfigError](err)
			if !ok || ce.Field != tc.field || !strings.Contains(ce.Reason, tc.want) {
				t.Errorf("New = %v, want a ConfigError on %s saying %q", err, tc.field, tc.want)
			}
		})
	}
}

// txtServer is a DNS server on loopback (UDP) answering TXT questions
// for one name from a set the test changes.
type txtServer struct {
	pc      net.PacketConn
	mu      sync.Mutex
	name    string
	values  []string
	queries int
	later   string // served too from question after+1 on
	after   int
	wg      sync.WaitGroup
}

func startTXTServer(t *testing.T, name string) *txtServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &txtServer{pc: pc, name: name}
	s.wg.Go(s.serve)
	t.Cleanup(func() { pc.Close(); s.wg.Wait() })
	return s
}

func (s *txtServer) set(values ...string) {
	s.mu.Lock()
	s.values = values
	s.mu.Unlock()
}

func (s *txtServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if reply, err := s.answer(buf[:n]); err == nil {
			s.pc.WriteTo(reply, from)
		}
	}
}

func (s *txtServer) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.queries++
	values := s.values
	if s.later != "" && s.queries > s.after {
		values = append(slices.Clip(values), s.later)
	}
	s.mu.Unlock()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	if q.Type == dnsmessage.TypeTXT && strings.EqualFold(q.Name.String(), s.name) {
		for _, v := range values {
			b.TXTResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1},
				dnsmessage.TXTResource{TXT: []string{v}})
		}
	}
	return b.Finish()
}

// TestWait checks the propagation check against a real DNS server: it
// waits until the server serves the value, and gives up after
// PropagationTimeout.
func TestWait(t *testing.T) {
	chal := challenge("example.org")
	dns := startTXTServer(t, "_acme-challenge.example.org.")
	dns.set("an older challenge's value")
	s, err := New(Config{Path: writeHook(t, "exit 0"), Resolvers: []string{dns.pc.LocalAddr().String()},
		PropagationTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Wait(t.Context(), chal)
	if err == nil || !strings.Contains(err.Error(), "not served by 127.0.0.1:") {
		t.Errorf("Wait = %v, want the record not served", err)
	}

	// The record appears after two more questions: Wait asks until then.
	s.cfg.PropagationTimeout = time.Minute
	dns.mu.Lock()
	dns.later, dns.after = chal.DNS01KeyAuthorization(), dns.queries+2
	dns.mu.Unlock()
	if err := s.Wait(t.Context(), chal); err != nil {
		t.Errorf("Wait = %v, want nil once the record is served", err)
	}
	dns.mu.Lock()
	asked := dns.queries - dns.after + 2
	dns.mu.Unlock()
	if asked < 3 {
		t.Errorf("Wait asked %d times, want it to ask until the record is there (3)", asked)
	}

	none, err := New(Config{Path: writeHook(t, "exit 0")})
	if err != nil {
		t.Fatal(err)
	}
	if err := none.Wait(t.Context(), challenge("unserved.example.org")); err != nil {
		t.Errorf("Wait without resolvers = %v, want nil at once", err)
	}
}
