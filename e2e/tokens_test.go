package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"quictunnel/internal/coordinator"
	"quictunnel/internal/localproxy"
	"quictunnel/quictun"
)

const (
	aliceToken = "alice-token-0123456789"
	bobToken   = "bob-token-0123456789ab"
)

// TestTokenReload reloads a tokens file under a running coordinator: a
// bad file changes nothing; dropping alice's token disconnects her with
// the auth error and withdraws her exposed app; bob's changed grant (no
// forward proxy) applies to his next session.
func TestTokenReload(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens.yaml")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("tokens:\n  - {token: " + aliceToken + ", client: alice}\n  - {token: " + bobToken + ", client: bob}\n")
	tokens, err := coordinator.LoadTokens(file)
	if err != nil {
		t.Fatal(err)
	}
	cert, pool := loadCoordinatorCert(t)
	coordLog := &logBuffer{}
	coord, err := coordinator.New(coordinator.Config{Listen: "127.0.0.1:0", Certificate: cert, Tokens: tokens,
		ReporterListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Targets: coordinator.TargetPolicy{AllowPrivate: true},
		Logger: coordLog.logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	coordDone := make(chan error, 1)
	go func() { coordDone <- coord.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-coordDone
		if t.Failed() {
			t.Logf("coordinator log:\n%s", coordLog)
		}
	})

	app := startApp(t)
	client := func(token string, services ...quictun.ExposedService) (*localproxy.Proxy, chan error) {
		p, err := localproxy.New(localproxy.Config{Listen: "127.0.0.1:0", UDPListen: "127.0.0.1:0",
			Coordinator: coord.Addr().String(), Reporter: coord.ReporterAddr().String(), Token: token, RootCAs: pool,
			ServerName: "localhost", Services: services, ConnectTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		pctx, pcancel := context.WithCancel(context.Background())
		go func() { done <- p.Run(pctx) }()
		t.Cleanup(func() {
			pcancel()
			err := <-done
			done <- err
		})
		return p, done
	}
	alice, aliceDone := client(aliceToken, quictun.ExposedService{Kind: quictun.ServiceHTTP, Name: "app", Local: app})
	bob, _ := client(bobToken)
	waitFor(t, "both clients and alice's app", func() bool {
		regs := alice.Client().Registrations()
		return coord.Server().Stats().Clients == 2 && len(regs) == 1 && regs[0].Err == nil
	})
	public := &http.Client{Timeout: 10 * time.Second}
	getApp := func() int {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+coord.HTTPAddr().String()+"/", nil)
		req.Host = "app.localhost"
		resp, err := public.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := getApp(); s != 200 {
		t.Fatalf("alice's app answered %d before the reload", s)
	}
	proxyURL, _ := url.Parse("http://" + bob.Addr().String())
	tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	viaBob := func() (int, string) {
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://" + app + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if s, body := viaBob(); s != 200 {
		t.Fatalf("bob's request answered %d %q before the reload", s, body)
	}

	// A bad file keeps the tokens in force.
	write("tokens:\n  - {token: short}\n")
	if _, err := coord.ReloadTokensFile(file); err == nil || !strings.Contains(err.Error(), "stay") {
		t.Fatalf("reload of a bad file: %v, want an error saying the old tokens stay", err)
	}
	if n := coord.Server().Stats().Clients; n != 2 {
		t.Fatalf("%d clients after a bad reload, want 2", n)
	}

	// Alice revoked, bob barred from the forward proxy.
	write("tokens:\n  - {token: " + bobToken + ", client: bob, forward: false}\n")
	n, err := coord.ReloadTokensFile(file)
	if err != nil || n != 1 {
		t.Fatalf("reload: %d disconnected, %v; want 1", n, err)
	}
	select {
	case err := <-aliceDone:
		aliceDone <- err
		if !errors.Is(err, quictun.ErrAuthFailed) || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("alice's localproxy ended with %v, want the token refused as revoked", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("alice's localproxy still runs after her token was revoked")
	}
	waitFor(t, "alice gone", func() bool { return coord.Server().Stats().Clients == 1 })
	if s := getApp(); s == 200 {
		t.Errorf("alice's app still answers 200 after her token was revoked")
	}
	if s, body := viaBob(); s != 403 || !strings.Contains(body, "forward proxy") {
		t.Errorf("bob's request after the reload: %d %q, want 403 (no forward proxy)", s, body)
	}
}

// TestTokenReloadOnSIGHUP checks the real coordinator re-reads --tokens on
// SIGHUP: a bad file is logged and changes nothing, a file without the
// client's token disconnects it (localproxy then exits, refused).
func TestTokenReloadOnSIGHUP(t *testing.T) {
	quicPort, stunPort, proxyPort := freeUDPPort(t), freeUDPPort(t), freeTCPPort(t)
	certs, _ := filepath.Abs(certsDir())
	file := filepath.Join(t.TempDir(), "tokens.yaml")
	os.WriteFile(file, []byte("tokens:\n  - {token: "+aliceToken+", client: alice}\n"), 0o600)
	coord := start(t, nil, "coordinator", "--listen", "127.0.0.1:"+strconv.Itoa(quicPort),
		"--reporter-listen", "127.0.0.1:"+strconv.Itoa(stunPort), "--tokens", file,
		"--cert", filepath.Join(certs, "coordinator.pem"), "--key", filepath.Join(certs, "coordinator-key.pem"))
	lp := start(t, nil, "localproxy", "--listen", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort), "--reporter", "127.0.0.1:"+strconv.Itoa(stunPort),
		"--token", aliceToken, "--ca", filepath.Join(certs, "ca.pem"), "--server-name", "localhost")
	waitFor(t, "alice connected", func() bool { return strings.Contains(coord.out.String(), "client connected") })

	os.WriteFile(file, []byte("tokens: [[[\n"), 0o600)
	coord.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the bad file logged", func() bool { return strings.Contains(coord.out.String(), "tokens file not reloaded") })

	os.WriteFile(file, []byte("tokens:\n  - {token: "+bobToken+", client: bob}\n"), 0o600)
	coord.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the reload logged", func() bool {
		return strings.Contains(coord.out.String(), "tokens file reloaded") && strings.Contains(coord.out.String(), "clients_disconnected=1")
	})
	select {
	case err := <-lp.done:
		lp.killed = true // exited as expected: no SIGINT in cleanup
		if err == nil || !strings.Contains(lp.out.String(), "revoked") {
			t.Fatalf("localproxy exited with %v, want a failure saying the token was revoked:\n%s", err, lp.out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("localproxy still runs after its token was revoked:\n%s", lp.out)
	}
}
