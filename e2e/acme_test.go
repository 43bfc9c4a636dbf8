package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"quictunnel/quictun"
)

// acmeCertLifetime is the validity of the certificates Pebble issues in
// TestACME: short, so that coordinator renews within the test (certmagic
// renews with a third of the lifetime left).
const acmeCertLifetime = 24

// TestACME runs coordinator with automatic certificates against Pebble,
// the ACME test CA, which validates every name over TLS-ALPN-01 at
// coordinator's --https port (its DNS resolves every name to 127.0.0.1):
// coordinator obtains the certificate of its own name, serves it on QUIC
// (localproxy verifies it with --ca Pebble's root) and --tcp-listen,
// keeps it across a restart without a new order, obtains one on demand for
// a published name over --https and none for an unpublished name, and
// renews its own while localproxy stays connected.
func TestACME(t *testing.T) {
	dir := t.TempDir()
	quicPort, tcpPort, httpsPort, proxyPort, appPort := freeUDPPort(t), freeTCPPort(t), freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	pb := startPebble(t, dir, httpsPort)

	const own, domain = "tunnel.example.com", "apps.example.com"
	acmeDir := filepath.Join(dir, "acme")
	coordArgs := []string{"--listen", "127.0.0.1:" + strconv.Itoa(quicPort), "--tcp-listen", "127.0.0.1:" + strconv.Itoa(tcpPort),
		"--https", "127.0.0.1:" + strconv.Itoa(httpsPort), "--domain", domain, "--token", "acme-token",
		"--acme-email", "ops@example.com", "--acme-ca", pb.directory,
		"--acme-dir", acmeDir, "--acme-name", own, "--acme-renew-check", "1s"}
	coordEnv := []string{"SSL_CERT_FILE=" + pb.apiCA} // coordinator trusts Pebble's own HTTPS
	coord := start(t, coordEnv, "coordinator", coordArgs...)
	obtained := "ACME: certificate obtained\" name=" + own
	waitFor(t, "the certificate of coordinator's name", func() bool { return strings.Contains(coord.out.String(), obtained) })

	roots, rootFile := pb.root(t, dir)
	tcpAddr := "127.0.0.1:" + strconv.Itoa(tcpPort)
	first := servedLeaf(t, tcpAddr, own, roots, quictun.ALPNControl)

	// A restart loads the certificate from --acme-dir: no new order. (A
	// renewal may come at any time: Pebble's renewal information suggests
	// a window of the whole lifetime of such short certificates.)
	coord.stop(t)
	renewedBefore := strings.Contains(coord.out.String(), obtained+" renewal=true")
	coord = start(t, coordEnv, "coordinator", coordArgs...)
	waitFor(t, "coordinator listening again", func() bool { return canDial(tcpAddr) })
	again := servedLeaf(t, tcpAddr, own, roots, quictun.ALPNControl)
	if !renewedBefore && !strings.Contains(coord.out.String(), obtained+" renewal=true") && again.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Errorf("after a restart coordinator serves certificate %x, want the stored %x", again.SerialNumber, first.SerialNumber)
	}
	if strings.Contains(coord.out.String(), "renewal=false") {
		t.Errorf("coordinator ordered a new certificate after a restart:\n%s", coord.out)
	}

	// localproxy verifies coordinator's QUIC certificate with Pebble's root.
	start(t, nil, "demoapp", "--listen", "127.0.0.1:"+strconv.Itoa(appPort))
	lp := start(t, nil, "localproxy", "--listen", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort), "--server-name", own, "--ca", rootFile,
		"--token", "acme-token", "--transport", "quic", "--expose", "app=127.0.0.1:"+strconv.Itoa(appPort))
	appURL := "https://app." + domain + ":" + strconv.Itoa(httpsPort) + "/"
	waitFor(t, "the https URL published", func() bool { return strings.Contains(lp.out.String(), "url="+appURL) })

	// --https: a certificate on demand for the published name...
	httpsAddr := "127.0.0.1:" + strconv.Itoa(httpsPort)
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
		},
	}}
	getApp := func() {
		t.Helper()
		resp, err := client.Get(appURL)
		if err != nil {
			t.Fatalf("GET %s: %v", appURL, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", appURL, resp.Status)
		}
	}
	getApp()
	// ... and none for a name nobody publishes: the handshake fails and no
	// order is placed.
	for _, name := range []string{"nobody." + domain, "random.example.net"} {
		c, err := tls.Dial("tcp", httpsAddr, &tls.Config{ServerName: name, RootCAs: roots})
		if err == nil {
			c.Close()
			t.Errorf("a TLS handshake for unpublished %s succeeded", name)
		}
	}
	if out := coord.out.String(); strings.Contains(out, "name=nobody.") || strings.Contains(out, "name=random.") {
		t.Errorf("coordinator ordered a certificate for an unpublished name:\n%s", out)
	}

	// Renewal: a new certificate for new connections; localproxy's
	// connection stays up and the app stays reachable.
	renewals := strings.Count(coord.out.String(), obtained+" renewal=true")
	before := servedLeaf(t, tcpAddr, own, roots, quictun.ALPNControl)
	waitFor(t, "the renewal of coordinator's certificate", func() bool {
		return strings.Count(coord.out.String(), obtained+" renewal=true") > renewals
	})
	// certmagic logs the renewal a moment before it swaps the certificate.
	var renewed *x509.Certificate
	waitFor(t, "the renewed certificate served", func() bool {
		renewed = servedLeaf(t, tcpAddr, own, roots, quictun.ALPNControl)
		return renewed.SerialNumber.Cmp(before.SerialNumber) != 0
	})
	getApp()
	if n := strings.Count(lp.out.String(), "connected to coordinator"); n != 1 {
		t.Errorf("localproxy connected %d times, want once (the renewal must not drop connections):\n%s", n, lp.out)
	}
	t.Logf("certificate %x renewed as %x", before.SerialNumber, renewed.SerialNumber)
}

// pebble is Pebble running for a test.
type pebble struct {
	directory string // the ACME directory URL
	apiCA     string // file of the CA of Pebble's own HTTPS
	mgmtPort  int
}

// startPebble runs Pebble until the test ends, validating TLS-ALPN-01
// challenges at tlsPort of 127.0.0.1, whatever the name (its DNS server
// answers 127.0.0.1 to everything), and issuing certificates valid for
// acmeCertLifetime seconds.
func startPebble(t *testing.T, dir string, tlsPort int) *pebble {
	t.Helper()
	path := pebblePath(t)
	return startPebbleDNS(t, path, dir, tlsPort, startTestDNS(t))
}

// startPebbleDNS is startPebble, at path, with dns as Pebble's DNS server.
func startPebbleDNS(t *testing.T, path, dir string, tlsPort int, dns string) *pebble {
	t.Helper()
	apiCA, apiCert, apiKey := writeTestServerCert(t, dir)
	acmePort, mgmtPort := freeTCPPort(t), freeTCPPort(t)
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":           "127.0.0.1:" + strconv.Itoa(acmePort),
		"managementListenAddress": "127.0.0.1:" + strconv.Itoa(mgmtPort),
		"certificate":             apiCert, "privateKey": apiKey,
		"httpPort": freeTCPPort(t), "tlsPort": tlsPort,
		"ocspResponderURL": "", "externalAccountBindingRequired": false,
		"retryAfter":   map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm": "ecdsa",
		"profiles":     map[string]any{"default": map[string]any{"description": "short", "validityPeriod": acmeCertLifetime}},
	}}
	confFile := filepath.Join(dir, "pebble.json")
	b, _ := json.Marshal(conf)
	if err := os.WriteFile(confFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p := startCmd(t, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"},
		path, "-config", confFile, "-dnsserver", dns)
	waitFor(t, "pebble listening", func() bool { return strings.Contains(p.out.String(), "Listening on") })
	return &pebble{directory: "https://127.0.0.1:" + strconv.Itoa(acmePort) + "/dir", apiCA: apiCA, mgmtPort: mgmtPort}
}

// root is the root Pebble signs with, as a pool and as a file in dir.
func (p *pebble) root(t *testing.T, dir string) (*x509.CertPool, string) {
	t.Helper()
	root := pebbleRoot(t, p.mgmtPort, p.apiCA)
	file := filepath.Join(dir, "pebble-root.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return pool, file
}

// TestACMETCPListen: without --https, coordinator answers the CA's
// challenge on --tcp-listen, and a client over the TCP transport verifies
// the certificate with Pebble's root.
func TestACMETCPListen(t *testing.T) {
	dir := t.TempDir()
	quicPort, tcpPort, proxyPort := freeUDPPort(t), freeTCPPort(t), freeTCPPort(t)
	pb := startPebble(t, dir, tcpPort)
	const own = "tunnel.example.com"
	coord := start(t, []string{"SSL_CERT_FILE=" + pb.apiCA}, "coordinator",
		"--listen", "127.0.0.1:"+strconv.Itoa(quicPort), "--tcp-listen", "127.0.0.1:"+strconv.Itoa(tcpPort),
		"--token", "acme-token", "--acme-email", "ops@example.com", "--acme-ca", pb.directory,
		"--acme-dir", filepath.Join(dir, "acme"), "--acme-name", own)
	waitFor(t, "the certificate of coordinator's name", func() bool {
		return strings.Contains(coord.out.String(), "ACME: certificate obtained\" name="+own)
	})
	_, rootFile := pb.root(t, dir)
	lp := start(t, nil, "localproxy", "--listen", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--coordinator", "127.0.0.1:"+strconv.Itoa(quicPort), "--coordinator-tcp", "127.0.0.1:"+strconv.Itoa(tcpPort),
		"--transport", "tcp", "--server-name", own, "--ca", rootFile, "--token", "acme-token")
	waitFor(t, "localproxy connected over TCP", func() bool { return strings.Contains(lp.out.String(), "connected to coordinator") })
}

// pebblePath finds Pebble: built into .tools by scripts/test-deps.sh, or
// on PATH.
func pebblePath(t *testing.T) string {
	t.Helper()
	return toolPath(t, "pebble", "the ACME test CA")
}

// toolPath finds a test tool scripts/test-deps.sh builds into .tools, or
// on PATH; without it the test is skipped (fails in CI).
func toolPath(t *testing.T, name, what string) string {
	t.Helper()
	if p, err := filepath.Abs(filepath.Join("..", ".tools", name)); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not built; scripts/test-deps.sh should have built it into .tools/", name)
	}
	t.Skipf("%s (%s) not built: run scripts/test-deps.sh", name, what)
	return ""
}

// startCmd runs a program that is not one of ours until the test ends.
func startCmd(t *testing.T, env []string, path string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &process{cmd: cmd, out: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(path), p.out)
		}
	})
	return p
}

// stop ends a process started with start by SIGINT, as its cleanup would,
// and leaves nothing for the cleanup to do.
func (p *process) stop(t *testing.T) {
	t.Helper()
	p.killed = true
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("exited with %v after SIGINT", err)
		}
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("did not stop on SIGINT")
	}
}

// canDial reports whether a TCP connection to addr is accepted.
func canDial(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// servedLeaf is the certificate served at addr for name, verified
// against roots.
func servedLeaf(t *testing.T, addr, name string, roots *x509.CertPool, alpn string) *x509.Certificate {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{alpn}})
	if err != nil {
		t.Fatalf("TLS to %s as %s: %v", addr, name, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// pebbleRoot fetches the root Pebble signs with from its management
// interface.
func pebbleRoot(t *testing.T, port int, caFile string) *x509.Certificate {
	t.Helper()
	pemCA, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemCA)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := client.Get("https://127.0.0.1:" + strconv.Itoa(port) + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	block, _ := pem.Decode(body)
	if block == nil {
		t.Fatalf("pebble root: no PEM in %q", body)
	}
	root, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// writeTestServerCert makes a CA and a certificate it signs for
// 127.0.0.1, localhost and names (Pebble serves its API with one); it
// returns the files.
func writeTestServerCert(t *testing.T, dir string, names ...string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pebble API test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: append([]string{"localhost"}, names...),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "api-ca.pem"), filepath.Join(dir, "api.pem"), filepath.Join(dir, "api-key.pem")
	for file, block := range map[string]*pem.Block{caFile: {Type: "CERTIFICATE", Bytes: caDER},
		certFile: {Type: "CERTIFICATE", Bytes: leafDER}, keyFile: {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}

// startTestDNS serves DNS on loopback, over UDP and TCP on one port (Pebble
// asks over TCP), until the test ends, answering every A question with
// 127.0.0.1 and every other with no record: Pebble validates each name at
// coordinator on this machine.
func startTestDNS(t *testing.T) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for range 20 {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for DNS over both UDP and TCP")
	}
	t.Cleanup(func() { pc.Close(); ln.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if reply, err := dnsAnswer(buf[:n]); err == nil {
				pc.WriteTo(reply, from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				for {
					var n [2]byte
					if _, err := io.ReadFull(c, n[:]); err != nil {
						return
					}
					query := make([]byte, int(n[0])<<8|int(n[1]))
					if _, err := io.ReadFull(c, query); err != nil {
						return
					}
					reply, err := dnsAnswer(query)
					if err != nil {
						return
					}
					c.Write(append([]byte{byte(len(reply) >> 8), byte(len(reply))}, reply...))
				}
			}()
		}
	}()
	return pc.LocalAddr().String()
}

// dnsAnswer answers one DNS query: A 127.0.0.1 for any name.
func dnsAnswer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if q.Type == dnsmessage.TypeA {
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
		if err := b.AResource(rh, dnsmessage.AResource{A: [4]byte{127, 0, 0, 1}}); err != nil {
			return nil, fmt.Errorf("dns answer: %w", err)
		}
	}
	return b.Finish()
}

// TestACMECAUnreachable: coordinator starts although its CA does not
// answer, says why once, and keeps retrying in the background.
func TestACMECAUnreachable(t *testing.T) {
	dir := t.TempDir()
	quicPort, tcpPort := freeUDPPort(t), freeTCPPort(t)
	coord := start(t, nil, "coordinator",
		"--listen", "127.0.0.1:"+strconv.Itoa(quicPort), "--tcp-listen", "127.0.0.1:"+strconv.Itoa(tcpPort),
		"--token", "acme-token", "--acme-email", "ops@example.com", "--acme-ca", "https://127.0.0.1:"+strconv.Itoa(freeTCPPort(t))+"/dir",
		"--acme-dir", filepath.Join(dir, "acme"), "--acme-name", "tunnel.example.com")
	waitFor(t, "the failure logged", func() bool {
		return strings.Contains(coord.out.String(), `msg="ACME: certificate not obtained, retrying with backoff`)
	})
	out := coord.out.String()
	if !strings.Contains(out, "coordinator ready") || !strings.Contains(out, "connection refused") {
		t.Errorf("want coordinator ready and the reason (connection refused) logged:\n%s", out)
	}
}
