package browser

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// browserSpec says how to start one browser headless on a URL through a
// proxy, trusting the test CA, with a fresh profile. No WebDriver: the
// page itself reports to the test site.
type browserSpec struct {
	name  string
	bins  []string // candidates: absolute paths or names in PATH
	pkg   string   // the Debian package that has it
	start func(t *testing.T, bin, home, proxy string, caFile, url string) *exec.Cmd
}

var browsers = []browserSpec{
	{name: "firefox", bins: []string{"firefox-esr", "firefox"}, pkg: "firefox-esr", start: firefoxCmd},
	// The binary itself rather than Debian's /usr/bin/chromium wrapper,
	// which adds flags (remote extensions) from /etc/chromium.d.
	{name: "chromium", bins: []string{"/usr/lib/chromium/chromium", "chromium", "chromium-browser"}, pkg: "chromium", start: chromiumCmd},
}

// lookBrowser finds the browser's binary and certutil. Without them the
// test skips, except in CI (CI=true), where it fails.
func lookBrowser(t *testing.T, b browserSpec) string {
	t.Helper()
	missing := func(what, pkg string) {
		msg := fmt.Sprintf("%s not found: install %s (scripts/test-deps.sh does, as root)", what, pkg)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if _, err := exec.LookPath("certutil"); err != nil {
		missing("certutil", "libnss3-tools")
	}
	for _, c := range b.bins {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	missing(b.name, b.pkg)
	return ""
}

// nssTrust creates an NSS certificate database in dir that trusts the CA
// in caFile for TLS servers.
func nssTrust(t *testing.T, dir, caFile string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	db := "sql:" + dir
	for _, args := range [][]string{
		{"-N", "-d", db, "--empty-password"},
		{"-A", "-d", db, "-n", "quictunnel browser test CA", "-t", "C,,", "-i", caFile},
	} {
		if out, err := exec.Command("certutil", args...).CombinedOutput(); err != nil {
			t.Fatalf("certutil %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// firefoxCmd prepares a fresh profile (prefs in user.js, the CA in its
// cert9.db) and returns the command that opens url in it.
func firefoxCmd(t *testing.T, bin, home, proxy, caFile, url string) *exec.Cmd {
	profile := filepath.Join(home, "profile")
	nssTrust(t, profile, caFile)
	if err := os.WriteFile(filepath.Join(profile, "user.js"), []byte(firefoxPrefs(proxy)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless", "--no-remote", "--new-instance", "--profile", profile, url)
	// MOZ_REMOTE_SETTINGS_DEVTOOLS lets a release build take
	// services.settings.server from the prefs (Mozilla's own test
	// harnesses set it); otherwise remote settings are fetched regardless.
	cmd.Env = append(baseEnv(home), "MOZ_CRASHREPORTER_DISABLE=1", "MOZ_DISABLE_AUTO_SAFE_MODE=1", "MOZ_REMOTE_SETTINGS_DEVTOOLS=1")
	return cmd
}

// chromiumCmd prepares a home whose NSS database (~/.pki/nssdb, where
// Chromium on Linux looks for locally trusted roots) trusts the CA, and
// returns the command that opens url with a fresh --user-data-dir.
func chromiumCmd(t *testing.T, bin, home, proxy, caFile, url string) *exec.Cmd {
	nssTrust(t, filepath.Join(home, ".pki", "nssdb"), caFile)
	profile := filepath.Join(home, "profile")
	// Profile prefs for what flags do not reach: the password manager
	// (it would check the login form's password against a leak list),
	// preconnects to the search engine, sign-in.
	if err := os.MkdirAll(filepath.Join(profile, "Default"), 0o700); err != nil {
		t.Fatal(err)
	}
	prefs := `{"credentials_enable_service": false,` +
		`"profile": {"password_manager_enabled": false, "password_manager_leak_detection": false},` +
		`"net": {"network_prediction_options": 2}, "signin": {"allowed": false}, "search": {"suggest_enabled": false}}`
	if err := os.WriteFile(filepath.Join(profile, "Default", "Preferences"), []byte(prefs), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append(chromiumFlags(proxy, profile), url)...)
	cmd.Env = baseEnv(home)
	return cmd
}

// chromiumFlags makes Chromium send everything, loopback included,
// through proxy and keeps its background services quiet.
func chromiumFlags(proxy, userDataDir string) []string {
	return []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
		"--disable-sync", "--disable-extensions", "--disable-default-apps", "--disable-domain-reliability",
		"--disable-client-side-phishing-detection", "--disable-breakpad", "--metrics-recording-only",
		"--password-store=basic", "--disable-dev-shm-usage", "--mute-audio",
		"--autoplay-policy=no-user-gesture-required",
		// One flag (a second would replace it): HttpsUpgrades would try
		// https:// first for the plain-HTTP pages; the others are
		// background requests --disable-background-networking leaves on.
		"--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,NetworkTimeServiceQuerying," +
			"PasswordLeakDetection,MediaRouter,OptimizationHints,Translate,AutofillServerCommunication",
		"--proxy-server=http://" + proxy,
		// Without this Chromium bypasses the proxy for loopback names.
		"--proxy-bypass-list=<-loopback>",
		"--user-data-dir=" + userDataDir,
	}
}

// firefoxPrefs is the user.js of a test profile: localproxy as HTTP and
// HTTPS proxy for every host, and the background services that would
// phone home turned off (they would only be refused by the test's
// coordinator, but each costs a session and log noise).
func firefoxPrefs(proxy string) string {
	host, port, _ := strings.Cut(proxy, ":")
	prefs := map[string]any{
		// Proxy: manual, HTTP and HTTPS (CONNECT), nothing bypassed.
		"network.proxy.type":                                          1,
		"network.proxy.http":                                          host,
		"network.proxy.http_port":                                     mustAtoi(port),
		"network.proxy.ssl":                                           host,
		"network.proxy.ssl_port":                                      mustAtoi(port),
		"network.proxy.share_proxy_settings":                          false,
		"network.proxy.no_proxies_on":                                 "",
		"network.proxy.allow_hijacking_localhost":                     true,
		"network.proxy.socks_remote_dns":                              true,
		"network.trr.mode":                                            5, // no DNS over HTTPS
		"network.dns.disablePrefetch":                                 true,
		"network.prefetch-next":                                       false,
		"network.predictor.enabled":                                   false,
		"network.http.speculative-parallel-limit":                     0,
		"network.http.http3.enable":                                   false,
		"network.captive-portal-service.enabled":                      false,
		"network.connectivity-service.enabled":                        false,
		"dom.security.https_first":                                    false,
		"dom.security.https_first_schemeless":                         false,
		"dom.security.https_only_mode":                                false,
		"browser.fixup.alternate.enabled":                             false,
		"security.OCSP.enabled":                                       0,
		"security.remote_settings.crlite_filters.enabled":             false,
		"security.remote_settings.intermediates.enabled":              false,
		"security.certerrors.mitm.priming.enabled":                    false,
		"security.enterprise_roots.enabled":                           false,
		"toolkit.telemetry.enabled":                                   false,
		"toolkit.telemetry.unified":                                   false,
		"toolkit.telemetry.archive.enabled":                           false,
		"toolkit.telemetry.server":                                    "",
		"toolkit.telemetry.shutdownPingSender.enabled":                false,
		"toolkit.telemetry.firstShutdownPing.enabled":                 false,
		"toolkit.telemetry.newProfilePing.enabled":                    false,
		"toolkit.telemetry.updatePing.enabled":                        false,
		"toolkit.telemetry.bhrPing.enabled":                           false,
		"toolkit.coverage.endpoint.base":                              "",
		"datareporting.healthreport.uploadEnabled":                    false,
		"datareporting.policy.dataSubmissionEnabled":                  false,
		"datareporting.usage.uploadEnabled":                           false,
		"browser.ping-centre.telemetry":                               false,
		"browser.newtabpage.activity-stream.telemetry":                false,
		"browser.newtabpage.activity-stream.feeds.telemetry":          false,
		"browser.safebrowsing.malware.enabled":                        false,
		"browser.safebrowsing.phishing.enabled":                       false,
		"browser.safebrowsing.blockedURIs.enabled":                    false,
		"browser.safebrowsing.downloads.enabled":                      false,
		"browser.safebrowsing.downloads.remote.enabled":               false,
		"browser.safebrowsing.provider.mozilla.updateURL":             "",
		"browser.safebrowsing.provider.google4.updateURL":             "",
		"browser.safebrowsing.provider.google.updateURL":              "",
		"browser.safebrowsing.update.enabled":                         false,
		"app.update.auto":                                             false,
		"app.update.enabled":                                          false,
		"app.update.checkInstallTime":                                 false,
		"app.update.disabledForTesting":                               true,
		"services.settings.server":                                    "data:,#remote-settings-off",
		"services.settings.poll_interval":                             86400,
		"dom.push.enabled":                                            false,
		"dom.push.connection.enabled":                                 false,
		"dom.push.serverURL":                                          "",
		"app.normandy.enabled":                                        false,
		"app.normandy.api_url":                                        "",
		"app.shield.optoutstudies.enabled":                            false,
		"messaging-system.rsexperimentloader.enabled":                 false,
		"extensions.update.enabled":                                   false,
		"extensions.getAddons.cache.enabled":                          false,
		"extensions.systemAddon.update.enabled":                       false,
		"extensions.blocklist.enabled":                                false,
		"browser.search.update":                                       false,
		"browser.region.network.url":                                  "",
		"browser.region.update.enabled":                               false,
		"geo.enabled":                                                 false,
		"geo.provider.network.url":                                    "",
		"identity.fxaccounts.enabled":                                 false,
		"browser.translations.enabled":                                false,
		"browser.ml.enable":                                           false,
		"browser.discovery.enabled":                                   false,
		"browser.contentblocking.report.hide_vpn_banner":              true,
		"browser.newtabpage.enabled":                                  false,
		"browser.newtabpage.activity-stream.feeds.topsites":           false,
		"browser.newtabpage.activity-stream.feeds.section.topstories": false,
		"browser.newtabpage.activity-stream.feeds.system.topstories":  false,
		"browser.newtabpage.activity-stream.default.sites":            "",
		"browser.topsites.contile.enabled":                            false,
		"browser.urlbar.quicksuggest.enabled":                         false,
		"browser.startup.homepage_override.mstone":                    "ignore",
		"startup.homepage_welcome_url":                                "",
		"startup.homepage_welcome_url.additional":                     "",
		"browser.aboutwelcome.enabled":                                false,
		"browser.shell.checkDefaultBrowser":                           false,
		"browser.tabs.crashReporting.sendReport":                      false,
		"signon.rememberSignons":                                      false,
		"media.autoplay.default":                                      0,
		"media.gmp-manager.updateEnabled":                             false,
		"media.gmp-manager.url":                                       "",
		"media.gmp-gmpopenh264.enabled":                               false,
		"media.gmp-widevinecdm.enabled":                               false,
		"media.eme.enabled":                                           false,
		"media.autoplay.blocking_policy":                              0,
	}
	keys := make([]string, 0, len(prefs))
	for k := range prefs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		v := prefs[k]
		if s, ok := v.(string); ok {
			v = fmt.Sprintf("%q", s)
		}
		fmt.Fprintf(&b, "user_pref(%q, %v);\n", k, v)
	}
	return b.String()
}

func mustAtoi(s string) int {
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil {
		panic(fmt.Sprintf("port %q: %v", s, err))
	}
	return n
}

// baseEnv is a small environment: no proxy variables, no display, a home
// of the test's own.
func baseEnv(home string) []string {
	return []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "LANG=C.UTF-8", "TMPDIR=" + home}
}

// browserProc is a running browser in a process group of its own.
type browserProc struct {
	cmd      *exec.Cmd
	out      *logBuffer
	done     chan struct{} // closed when the browser has exited
	err      error         // its exit status, once done
	stopOnce sync.Once     // never signal the group id again once it is gone
}

// launch starts the browser in a home of its own and registers, as
// cleanups, its stop and the removal of that home (profile included).
func launch(t *testing.T, b browserSpec, bin, proxy string, caPEM []byte, url string) *browserProc {
	t.Helper()
	home, err := os.MkdirTemp("", "quictunnel-"+b.name+"-")
	if err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs after the browser's stop below.
	t.Cleanup(func() {
		if err := os.RemoveAll(home); err != nil {
			t.Errorf("remove %s profile: %v", b.name, err)
		}
	})
	caFile := filepath.Join(home, "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &browserProc{cmd: b.start(t, bin, home, proxy, caFile, url), out: &logBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", b.name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s output (last 4 kB):\n%s", b.name, tail(p.out.String(), 4096))
		}
	})
	return p
}

// stop kills the browser's process group (its id is the browser's PID)
// and waits until every process in it is gone. Only the first call acts.
func (p *browserProc) stop(t *testing.T) {
	p.stopOnce.Do(func() { p.kill(t) })
}

func (p *browserProc) kill(t *testing.T) {
	pgid := p.cmd.Process.Pid
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill browser process group %d: %v", pgid, err)
	}
	<-p.done
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			t.Errorf("browser processes of group %d still running 5s after SIGKILL", pgid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exited is closed when the browser exits (it should not, before the
// test stops it).
func (p *browserProc) exited() <-chan struct{} { return p.done }

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
