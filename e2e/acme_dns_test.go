package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dnsLab is Pebble validating DNS-01 challenges against
// pebble-challtestsrv, whose TXT records a hook script sets over its HTTP
// management API with curl.
type dnsLab struct {
	pb      *pebble
	dns     string // challtestsrv's DNS address, UDP and TCP
	hook    string // the hook script
	calls   string // file where the hook appends "ACTION FQDN DOMAIN" per call
	failing string // while this file exists the hook fails
}

// startDNSLab starts challtestsrv and Pebble asking it, and writes the
// hook into dir.
func startDNSLab(t *testing.T, dir string) *dnsLab {
	t.Helper()
	pebblePath, challPath := toolPath(t, "pebble", "the ACME test CA"), toolPath(t, "pebble-challtestsrv", "its DNS test server")
	dns, mgmt := freeUDPAndTCPPort(t), freeTCPPort(t)
	l := &dnsLab{dns: "127.0.0.1:" + strconv.Itoa(dns), hook: filepath.Join(dir, "acme-dns-hook"),
		calls: filepath.Join(dir, "hook-calls"), failing: filepath.Join(dir, "hook-fails")}
	mgmtURL := "http://127.0.0.1:" + strconv.Itoa(mgmt)
	startCmd(t, nil, challPath, "-dnsserver", l.dns, "-management", "127.0.0.1:"+strconv.Itoa(mgmt),
		"-http01", "", "-https01", "", "-doh", "", "-tlsalpn01", "", "-defaultIPv6", "")
	waitFor(t, "challtestsrv listening", func() bool { return canDial(l.dns) && canDial("127.0.0.1:"+strconv.Itoa(mgmt)) })
	script := `#!/bin/sh
# ACME DNS-01 hook: HOOK present|cleanup FQDN VALUE, against challtestsrv.
echo "$1 $2 $ACME_DNS_DOMAIN" >>'` + l.calls + `'
if [ -e '` + l.failing + `' ]; then
	echo "DNS API refused the update: bad credentials" >&2
	exit 3
fi
case $1 in
present) exec curl -sSf -d "{\"host\":\"$2\",\"value\":\"$3\"}" ` + mgmtURL + `/set-txt ;;
cleanup) exec curl -sSf -d "{\"host\":\"$2\"}" ` + mgmtURL + `/clear-txt ;;
*) echo "unknown action $1" >&2; exit 2 ;;
esac
`
	if err := os.WriteFile(l.hook, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	l.pb = startPebbleDNS(t, pebblePath, dir, freeTCPPort(t), l.dns)
	return l
}

// logTime is the time of the first line of a service's log holding s.
func logTime(t *testing.T, log, s string) time.Time {
	t.Helper()
	i := strings.Index(log, s)
	if i < 0 {
		t.Fatalf("no %q in the log", s)
	}
	line := log[strings.LastIndexByte(log[:i], '\n')+1:]
	stamp, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
	at, err := time.Parse(time.RFC3339Nano, stamp)
	if err != nil {
		t.Fatalf("log line %q: %v", line, err)
	}
	return at
}

// hookCalls is what the hook was called with, one call a line.
func (l *dnsLab) hookCalls() string {
	b, _ := os.ReadFile(l.calls)
	return string(b)
}

// freeUDPAndTCPPort is a port free on 127.0.0.1 for both UDP and TCP,
// for a DNS server.
func freeUDPAndTCPPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		pc.Close()
		if err == nil {
			ln.Close()
			return pc.LocalAddr().(*net.UDPAddr).Port
		}
	}
	t.Fatal("no port free for DNS over both UDP and TCP")
	return 0
}

// TestACMEDNSWildcard runs coordinator with a DNS-01 hook against Pebble
// and challtestsrv: it obtains one wildcard *.DOMAIN for --https at start
// (and its own name over DNS-01 too), serves it for two published names,
// orders nothing per name, and the hook was called to present and clean
// up the record, which coordinator checked at challtestsrv
// (--acme-dns-resolvers) before the CA did.
func TestACMEDNSWildcard(t *testing.T) {
	dir := t.TempDir()
	lab := startDNSLab(t, dir)
	quicPort, httpsPort, proxyPort, appPort := freeUDPPort(t), freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	const own, domain = "tunnel.example.com", "apps.example.com"
	coord := start(t, []string{"SSL_CERT_FILE=" + lab.pb.apiCA}, "coordinator",
		"--listen", "127.0.0.1:"+strconv.Itoa(quicPort), "--https", "127.0.0.1:"+strconv.Itoa(httpsPort),
		"--domain", domain, "--token", "acme-token",
		"--acme-email", "ops@example.com", "--acme-ca", lab.pb.directory, "--acme-dir", filepath.Join(dir, "acme"),
		"--acme-name", own, "--acme-dns-hook", lab.hook, "--acme-dns-resolvers", lab.dns, "--acme-renew-check", "1s")
	wildObtained := "ACME: certificate obtained\" name=*." + domain
	waitFor(t, "the wildcard certificate", func() bool { return strings.Contains(coord.out.String(), wildObtained) })
	t.Logf("wildcard *.%s obtained %s after it was ordered", domain,
		logTime(t, coord.out.String(), wildObtained).Sub(logTime(t, coord.out.String(), "ACME: ordering certificate\" name=*."+domain)))
	waitFor(t, "the certificate of coordinator's name", func() bool {
		return strings.Contains(coord.out.String(), "ACME: certificate obtained\" name="+own)
	})

	calls := lab.hookCalls()
	for _, want := range []string{"present _acme-challenge." + domain + ". " + domain, "cleanup _acme-challenge." + domain + ". " + domain,
		"present _acme-challenge." + own + ". " + own} {
		if !strings.Contains(calls, want) {
			t.Errorf("the hook was not called as %q; its calls:\n%s", want, calls)
		}
	}

	roots, rootFile := lab.pb.root(t, dir)
	start(t, nil, "demoapp", "--listen", "127.0.0.1:"+strconv.Itoa(appPort))
	app := "127.0.0.1:" + strconv.Itoa(appPort)
	lp := start(t, nil, "localproxy", "--listen", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort), "--server-name", own, "--ca", rootFile,
		"--token", "acme-token", "--transport", "quic", "--expose", "app="+app, "--expose", "web="+app)
	httpsAddr := "127.0.0.1:" + strconv.Itoa(httpsPort)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
		},
	}}
	for _, name := range []string{"app", "web"} {
		url := "https://" + name + "." + domain + ":" + strconv.Itoa(httpsPort) + "/"
		waitFor(t, url+" published", func() bool { return strings.Contains(lp.out.String(), "url="+url) })
		leaf := servedLeaf(t, httpsAddr, name+"."+domain, roots, "http/1.1")
		if !slices.Contains(leaf.DNSNames, "*."+domain) {
			t.Errorf("%s.%s is served a certificate for %v, want *.%s", name, domain, leaf.DNSNames, domain)
		}
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", url, resp.Status)
		}
	}
	// The wildcard is the only certificate --https has: no order per name.
	if n := strings.Count(coord.out.String(), "ACME: ordering certificate\" name=*."+domain+" renewal=false"); n != 1 {
		t.Errorf("%d first orders of the wildcard, want 1:\n%s", n, coord.out)
	}
	if out := coord.out.String(); strings.Contains(out, "name=app.") || strings.Contains(out, "name=web.") {
		t.Errorf("coordinator ordered a certificate for a published name:\n%s", out)
	}

	// Renewal (Pebble's certificates last acmeCertLifetime seconds): over
	// DNS-01 again, and the renewed wildcard serves new connections.
	before := servedLeaf(t, httpsAddr, "app."+domain, roots, "http/1.1")
	renewed := wildObtained + " renewal=true"
	renewals := strings.Count(coord.out.String(), renewed)
	waitFor(t, "the renewal of the wildcard", func() bool { return strings.Count(coord.out.String(), renewed) > renewals })
	// certmagic logs the renewal a moment before it swaps the certificate.
	var after *x509.Certificate
	waitFor(t, "the renewed wildcard served", func() bool {
		after = servedLeaf(t, httpsAddr, "web."+domain, roots, "http/1.1")
		return after.SerialNumber.Cmp(before.SerialNumber) != 0
	})
	if !slices.Contains(after.DNSNames, "*."+domain) {
		t.Errorf("after the renewal --https serves a certificate for %v, want *.%s", after.DNSNames, domain)
	}
	if n := strings.Count(lab.hookCalls(), "present _acme-challenge."+domain+"."); n < 2 {
		t.Errorf("the hook presented the wildcard's record %d times, want again for the renewal:\n%s", n, lab.hookCalls())
	}
	// The own name's certificate serves QUIC: localproxy verified it.
	if !strings.Contains(lp.out.String(), "connected to coordinator") {
		t.Errorf("localproxy not connected:\n%s", lp.out)
	}
}

// TestACMEDNSHookFails: a hook that fails is reported once per name, with
// the hook and its stderr, coordinator runs on, and certmagic tries again
// with backoff (its first retry comes after a minute, so this test takes
// that long; it runs in parallel with others).
func TestACMEDNSHookFails(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	lab := startDNSLab(t, dir)
	if err := os.WriteFile(lab.failing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const own, domain = "tunnel.example.com", "apps.example.com"
	coord := start(t, []string{"SSL_CERT_FILE=" + lab.pb.apiCA}, "coordinator",
		"--listen", "127.0.0.1:"+strconv.Itoa(freeUDPPort(t)), "--https", "127.0.0.1:"+strconv.Itoa(freeTCPPort(t)),
		"--domain", domain, "--token", "acme-token",
		"--acme-email", "ops@example.com", "--acme-ca", lab.pb.directory, "--acme-dir", filepath.Join(dir, "acme"),
		"--acme-name", own, "--acme-dns-hook", lab.hook)
	failed := `msg="ACME: certificate not obtained, retrying with backoff (a certificate in use keeps serving)" name=*.` + domain
	waitFor(t, "the hook's failure logged", func() bool { return strings.Contains(coord.out.String(), failed) })
	line := coord.out.String()
	line = line[strings.Index(line, failed):]
	line = line[:strings.IndexByte(line, '\n')]
	for _, want := range []string{lab.hook + " present _acme-challenge." + domain + ".", "exit status 3", "DNS API refused the update: bad credentials"} {
		if !strings.Contains(line, want) {
			t.Errorf("the error does not say %q:\n%s", want, line)
		}
	}
	if !strings.Contains(coord.out.String(), "coordinator ready") {
		t.Errorf("coordinator is not running:\n%s", coord.out)
	}
	failedAt := time.Now()
	if err := os.Remove(lab.failing); err != nil {
		t.Fatal(err)
	}
	obtained := "ACME: certificate obtained\" name=*." + domain
	waitForWithin(t, 2*time.Minute, "the wildcard obtained on a retry", func() bool { return strings.Contains(coord.out.String(), obtained) })
	t.Logf("the retry obtained the wildcard %s after the failure", time.Since(failedAt).Round(100*time.Millisecond))
	if n := strings.Count(coord.out.String(), failed); n != 1 {
		t.Errorf("the failure was logged %d times, want once:\n%s", n, coord.out)
	}
	if n := strings.Count(lab.hookCalls(), "present _acme-challenge."+domain+"."); n != 2 {
		t.Errorf("the hook presented the wildcard's record %d times, want 2 (a failure, then the retry):\n%s", n, lab.hookCalls())
	}
}

// TestACMEDNSCheckConfig: coordinator check-config checks the DNS-01
// setup: the hook must be an executable file, and goes with acme-email;
// resolvers go with a hook.
func TestACMEDNSCheckConfig(t *testing.T) {
	dir := t.TempDir()
	hook, plain := filepath.Join(dir, "hook"), filepath.Join(dir, "plain")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const base = "token: t\nhttps: \":443\"\ndomain: apps.example.org\n"
	const acme = "acme-email: ops@example.org\n"
	for _, tc := range []struct {
		name, yaml, want string // want "" for ok
	}{
		{"valid", base + acme + "acme-dns-hook: " + hook + "\nacme-dns-resolvers: [ns1.example.org, \"127.0.0.1:5353\"]\n", ""},
		{"missing", base + acme + "acme-dns-hook: " + filepath.Join(dir, "nothing") + "\n", "--acme-dns-hook"},
		{"not executable", base + acme + "acme-dns-hook: " + plain + "\n", "not executable"},
		{"directory", base + acme + "acme-dns-hook: " + dir + "\n", "not a regular file"},
		{"without acme-email", base + "cert: c.pem\nkey: k.pem\nacme-dns-hook: " + hook + "\n", "--acme-dns-hook"},
		{"resolvers without hook", base + acme + "acme-dns-resolvers: [ns1.example.org]\n", "--acme-dns-resolvers: needs --acme-dns-hook"},
		{"wildcard of localhost", "token: t\nhttps: \":443\"\n" + acme + "acme-name: tunnel.example.org\nacme-dns-hook: " + hook + "\n", `--domain "localhost"`},
		{"bad resolver", base + acme + "acme-dns-hook: " + hook + "\nacme-dns-resolvers: [\"ns1:dns\"]\n", "--acme-dns-resolvers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "coordinator.yaml")
			if err := os.WriteFile(file, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			out, code := runBinary(t, "coordinator", "check-config", file)
			if tc.want == "" {
				if code != 0 {
					t.Errorf("exit %d, %q; want 0", code, out)
				}
				return
			}
			if code != 1 || !strings.Contains(out, tc.want) || strings.Count(out, "\n") != 1 {
				t.Errorf("exit %d, %q; want 1 and one line saying %q", code, out, tc.want)
			}
		})
	}
}

// TestACMEDNSNsupdate runs the example hook, contrib/acme-dns-hook-nsupdate,
// against BIND's named on loopback, a primary for example.com that takes
// dynamic updates signed with a TSIG key, and which Pebble asks: the
// wildcard is obtained, served, and the challenge records are gone after.
func TestACMEDNSNsupdate(t *testing.T) {
	dir := t.TempDir()
	ns := startNamed(t, dir, "example.com")
	pb := startPebbleDNS(t, toolPath(t, "pebble", "the ACME test CA"), dir, freeTCPPort(t), ns.addr)
	hook, err := filepath.Abs(filepath.Join("..", "contrib", "acme-dns-hook-nsupdate"))
	if err != nil {
		t.Fatal(err)
	}
	httpsAddr := "127.0.0.1:" + strconv.Itoa(freeTCPPort(t))
	const own, domain = "tunnel.example.com", "apps.example.com"
	coord := start(t, []string{"SSL_CERT_FILE=" + pb.apiCA, "NSUPDATE_SERVER=127.0.0.1 " + ns.port, "NSUPDATE_KEY=" + ns.key},
		"coordinator", "--listen", "127.0.0.1:"+strconv.Itoa(freeUDPPort(t)), "--https", httpsAddr,
		"--domain", domain, "--token", "acme-token",
		"--acme-email", "ops@example.com", "--acme-ca", pb.directory, "--acme-dir", filepath.Join(dir, "acme"),
		"--acme-name", own, "--acme-dns-hook", hook, "--acme-dns-resolvers", ns.addr)
	for _, name := range []string{"*." + domain, own} {
		waitFor(t, "the certificate of "+name, func() bool {
			return strings.Contains(coord.out.String(), "ACME: certificate obtained\" name="+name)
		})
	}
	t.Logf("wildcard *.%s obtained %s after it was ordered (over nsupdate and named)", domain,
		logTime(t, coord.out.String(), "ACME: certificate obtained\" name=*."+domain).Sub(logTime(t, coord.out.String(), "ACME: ordering certificate\" name=*."+domain)))
	roots, _ := pb.root(t, dir)
	if leaf := servedLeaf(t, httpsAddr, "app."+domain, roots, "http/1.1"); !slices.Contains(leaf.DNSNames, "*."+domain) {
		t.Errorf("--https serves a certificate for %v, want *.%s", leaf.DNSNames, domain)
	}
	// cleanup removed the records present added.
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, ns.addr)
	}}
	for _, name := range []string{domain, own} {
		waitFor(t, "the TXT record of "+name+" removed", func() bool {
			txt, err := r.LookupTXT(t.Context(), "_acme-challenge."+name+".")
			return len(txt) == 0 && err != nil
		})
	}
	if !strings.Contains(ns.out.String(), "adding an RR at '_acme-challenge."+domain+"' TXT") {
		t.Errorf("named logged no update adding the wildcard's record:\n%s", ns.out)
	}
	// docs/operations.md shows the hook as it is.
	doc, err := os.ReadFile(filepath.Join("..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(hook); !strings.Contains(string(doc), "```sh\n"+string(b)+"```") {
		t.Error("docs/operations.md does not show contrib/acme-dns-hook-nsupdate as it is")
	}
}

// named is BIND's named running for a test.
type named struct {
	addr, port string // 127.0.0.1:PORT, UDP and TCP
	key        string // file of the TSIG key "acme", allowed to update TXT records
	out        *syncBuffer
}

// startNamed runs named (Debian's bind9) until the test ends, as the
// primary of zone, taking dynamic updates of TXT records signed with a
// key it makes.
func startNamed(t *testing.T, dir, zone string) *named {
	t.Helper()
	path, keygen := systemTool(t, "named", "bind9"), systemTool(t, "tsig-keygen", "bind9")
	systemTool(t, "nsupdate", "bind9-dnsutils")
	dir = filepath.Join(dir, "named")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(freeUDPAndTCPPort(t))
	ns := &named{addr: "127.0.0.1:" + port, port: port, key: filepath.Join(dir, "acme.key")}
	key, err := exec.Command(keygen, "-a", "hmac-sha256", "acme").Output()
	if err != nil {
		t.Fatalf("tsig-keygen: %v", err)
	}
	conf := `include "` + ns.key + `";
options {
	directory "` + dir + `";
	listen-on port ` + port + ` { 127.0.0.1; };
	listen-on-v6 { none; };
	pid-file none;
	recursion no;
	dnssec-validation no;
};
controls { };
zone "` + zone + `" {
	type primary;
	file "` + zone + `.zone";
	update-policy { grant acme. subdomain ` + zone + `. TXT; };
};
`
	zoneFile := "$TTL 60\n@ IN SOA ns1 hostmaster 1 60 60 600 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\n"
	for file, text := range map[string]string{"acme.key": string(key), "named.conf": conf, zone + ".zone": zoneFile} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := startCmd(t, nil, path, "-g", "-c", filepath.Join(dir, "named.conf"))
	ns.out = p.out
	waitFor(t, "named running", func() bool { return strings.Contains(p.out.String(), "running") && canDial(ns.addr) })
	return ns
}

// systemTool finds a program from a Debian package scripts/test-deps.sh
// installs; without it the test is skipped (fails in CI).
func systemTool(t *testing.T, name, pkg string) string {
	t.Helper()
	for _, dir := range []string{"", "/usr/sbin/", "/sbin/"} {
		if p, err := exec.LookPath(dir + name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not installed; scripts/test-deps.sh should have installed %s", name, pkg)
	}
	t.Skipf("%s not installed (Debian package %s; make test installs it)", name, pkg)
	return ""
}
