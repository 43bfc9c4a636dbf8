package e2e

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// services are the binaries with an example config file, a service file
// or both in contrib/.
var services = []string{"coordinator", "localproxy", "reporter"}

// helpFlag matches a flag's line in --help.
var helpFlag = regexp.MustCompile(`(?m)^\s+--([a-z0-9-]+)`)

// flagNames lists the long flags of a binary, as --help shows them,
// without --help, --version and --config (the keys a --config file may
// have).
func flagNames(t *testing.T, name string) []string {
	t.Helper()
	out, code := runBinary(t, name, "--help")
	if code != 0 {
		t.Fatalf("%s --help: exit %d: %s", name, code, out)
	}
	var names []string
	for _, m := range helpFlag.FindAllStringSubmatch(out, -1) {
		if n := m[1]; n != "help" && n != "version" && n != "config" {
			names = append(names, n)
		}
	}
	if len(names) < 5 {
		t.Fatalf("%s --help: found only %q", name, names)
	}
	return names
}

// exampleKey matches a key of an example config file, set or commented
// out ("# key: value").
var exampleKey = regexp.MustCompile(`(?m)^(?:# )?([a-z0-9-]+):(?: |$)`)

// TestExampleConfigs checks each service's contrib/NAME.yaml has a key
// for every flag (set or commented out) and none other, so the examples
// cannot drift from the flags; that NAME check-config accepts it; and that
// check-config refuses a bad file with exit 1 and a message naming the key.
func TestExampleConfigs(t *testing.T) {
	for _, name := range services {
		t.Run(name, func(t *testing.T) {
			path, _ := filepath.Abs(filepath.Join("..", "contrib", name+".yaml"))
			text, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			flags := flagNames(t, name)
			var keys []string
			for _, m := range exampleKey.FindAllStringSubmatch(string(text), -1) {
				keys = append(keys, m[1])
			}
			for _, f := range flags {
				if !slices.Contains(keys, f) {
					t.Errorf("contrib/%s.yaml lacks the key %s: (flag --%s); add it, set or commented out, with a comment", name, f, f)
				}
			}
			for _, k := range keys {
				if !slices.Contains(flags, k) {
					t.Errorf("contrib/%s.yaml has the key %s: but %s has no flag --%s", name, k, name, k)
				}
			}
			if out, code := runBinary(t, name, "check-config", path); code != 0 || out != path+": ok\n" {
				t.Errorf("%s check-config %s: exit %d, %q; want 0 and ok", name, path, code, out)
			}
			bad := map[string]struct{ text, want string }{
				"unknown key": {string(text) + "listn: x\n", "unknown key(s) listn"},
				"bad value":   {strings.Replace(string(text), "\nlog-level: info", "\nlog-level: loud", 1), `--log-level "loud"`},
				"bad type":    {strings.Replace(string(text), "\npprof: false", "\npprof: [1]", 1), "pprof"},
				"not yaml":    {"listen: [\n", "not a YAML mapping"},
			}
			// A value only this service refuses (its App.Check).
			own := map[string][3]string{
				"coordinator": {"\nrole: all", "\nrole: alll", `--role "alll": want all or dialback`},
				"localproxy":  {"\nexpose: []", "\nexpose: [app]", "--expose"},
				"reporter":    {"\nkeepalive-misses: 3", "\nkeepalive-misses: -1", "--keepalive-misses"},
			}[name]
			bad["own check"] = struct{ text, want string }{strings.Replace(string(text), own[0], own[1], 1), own[2]}
			if name == "localproxy" {
				bad["transport"] = struct{ text, want string }{strings.Replace(string(text), "\ntransport: auto", "\ntransport: udp", 1),
					`--transport: "udp": want auto, quic or tcp`}
			}
			for what, b := range bad {
				if b.text == string(text) {
					t.Fatalf("%s: the example has no line to change", what)
				}
				file := filepath.Join(t.TempDir(), name+".yaml")
				if err := os.WriteFile(file, []byte(b.text), 0o600); err != nil {
					t.Fatal(err)
				}
				out, code := runBinary(t, name, "check-config", file)
				if code != 1 || !strings.HasPrefix(out, name+": ") || !strings.Contains(out, b.want) || strings.Count(out, "\n") != 1 {
					t.Errorf("%s: %s check-config: exit %d, %q; want 1 and one line naming %q", what, name, code, out, b.want)
				}
			}
		})
	}
}

// TestSystemdUnits checks contrib/systemd/*.service with systemd-analyze
// verify (any warning fails, as does a missing executable: ExecStart is
// pointed at the test's binaries), and that each is sandboxed and reads
// /etc/quictunnel/NAME.yaml.
func TestSystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd; make test installs it)")
	}
	bin := binaries(t)
	for _, name := range []string{"coordinator", "reporter"} {
		t.Run(name, func(t *testing.T) {
			unit, err := os.ReadFile(filepath.Join("..", "contrib", "systemd", name+".service"))
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				"\nExecStart=/usr/local/bin/" + name + " --config /etc/quictunnel/" + name + ".yaml\n",
				"\nDynamicUser=yes\n",
				"\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
				"\nProtectSystem=strict\n",
				"\nStateDirectory=quictunnel-" + name + "\n",
				"\nNoNewPrivileges=yes\n",
				"\nRestartPreventExitStatus=2\n",
			} {
				if !strings.Contains(string(unit), want) {
					t.Errorf("%s.service lacks %q", name, strings.TrimSpace(want))
				}
			}
			if name == "coordinator" {
				// The credentials coordinator.yaml names.
				yaml, err := os.ReadFile(filepath.Join("..", "contrib", "coordinator.yaml"))
				if err != nil {
					t.Fatal(err)
				}
				for _, cred := range regexp.MustCompile(`/run/credentials/coordinator\.service/([a-z][a-z.-]*)`).FindAllStringSubmatch(string(yaml), -1) {
					if !strings.Contains(string(unit), "\nLoadCredential="+cred[1]+":/etc/quictunnel/") {
						t.Errorf("coordinator.yaml names the credential %s, which coordinator.service does not load", cred[1])
					}
				}
			}
			dir := t.TempDir()
			local := strings.ReplaceAll(string(unit), "/usr/local/bin/"+name, filepath.Join(bin, name))
			file := filepath.Join(dir, name+".service")
			if err := os.WriteFile(file, []byte(local), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, analyze, "verify", file).CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Errorf("systemd-analyze verify %s.service: %v\n%s", name, err, out)
			}
		})
	}
}

// plistValue is one value of a property list: <string>, <integer>,
// <true/>, <false/>, <array> or <dict>.
type plistValue struct {
	Kind     string
	Text     string
	Children []plistValue // an array's items; a dict's alternate keys and values
}

// parsePlist parses an XML property list (the format launchd reads).
func parsePlist(r io.Reader) (plistValue, error) {
	d := xml.NewDecoder(r)
	for {
		tok, err := d.Token()
		if err != nil {
			return plistValue{}, fmt.Errorf("no <plist> element: %w", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if se.Name.Local != "plist" {
				return plistValue{}, fmt.Errorf("root element <%s>, want <plist>", se.Name.Local)
			}
			v, err := plistChildren(d)
			if err != nil {
				return plistValue{}, err
			}
			if len(v) != 1 {
				return plistValue{}, fmt.Errorf("<plist> holds %d values, want 1", len(v))
			}
			return v[0], nil
		}
	}
}

// plistChildren reads values up to the end of the element being read.
func plistChildren(d *xml.Decoder) ([]plistValue, error) {
	var vals []plistValue
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		switch tok := tok.(type) {
		case xml.EndElement:
			return vals, nil
		case xml.CharData:
			if len(bytes.TrimSpace(tok)) > 0 {
				return nil, fmt.Errorf("stray text %q", tok)
			}
		case xml.StartElement:
			v := plistValue{Kind: tok.Name.Local}
			switch v.Kind {
			case "key", "string", "integer":
				if err := d.DecodeElement(&v.Text, &tok); err != nil {
					return nil, err
				}
			case "true", "false":
				if err := d.Skip(); err != nil {
					return nil, err
				}
			case "array", "dict":
				if v.Children, err = plistChildren(d); err != nil {
					return nil, err
				}
				if v.Kind == "dict" {
					if len(v.Children)%2 != 0 {
						return nil, errors.New("<dict> with a key and no value")
					}
					for i := 0; i < len(v.Children); i += 2 {
						if v.Children[i].Kind != "key" || v.Children[i+1].Kind == "key" {
							return nil, errors.New("<dict> whose entries are not <key> and value")
						}
					}
				}
			default:
				return nil, fmt.Errorf("unknown element <%s>", v.Kind)
			}
			vals = append(vals, v)
		}
	}
}

// get is the value of key in a dict.
func (v plistValue) get(key string) (plistValue, bool) {
	for i := 0; v.Kind == "dict" && i < len(v.Children); i += 2 {
		if v.Children[i].Text == key {
			return v.Children[i+1], true
		}
	}
	return plistValue{}, false
}

// TestLaunchdPlist parses contrib/launchd's property list for localproxy
// and checks what launchd needs: a Label matching the file name, and
// ProgramArguments that run localproxy with a --config file.
func TestLaunchdPlist(t *testing.T) {
	const label = "quictunnel.localproxy"
	f, err := os.Open(filepath.Join("..", "contrib", "launchd", label+".plist"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	root, err := parsePlist(f)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if l, ok := root.get("Label"); !ok || l.Kind != "string" || l.Text != label {
		t.Errorf("Label %+v, want the string %s", l, label)
	}
	args, ok := root.get("ProgramArguments")
	if !ok || args.Kind != "array" || len(args.Children) == 0 {
		t.Fatalf("ProgramArguments %+v, want an array", args)
	}
	var cmd []string
	for _, a := range args.Children {
		if a.Kind != "string" {
			t.Fatalf("ProgramArguments holds a <%s>, want strings", a.Kind)
		}
		cmd = append(cmd, a.Text)
	}
	if !filepath.IsAbs(cmd[0]) || !strings.Contains(strings.Join(cmd, " "), "/usr/local/bin/localproxy --config ") {
		t.Errorf("ProgramArguments %q: want an absolute program running /usr/local/bin/localproxy --config FILE", cmd)
	}
	if r, ok := root.get("RunAtLoad"); !ok || r.Kind != "true" {
		t.Errorf("RunAtLoad %+v, want <true/>", r)
	}
	if k, ok := root.get("KeepAlive"); !ok || k.Kind != "dict" {
		t.Errorf("KeepAlive %+v, want a dict", k)
	}
}
