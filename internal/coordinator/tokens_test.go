package coordinator

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

func TestParseTokens(t *testing.T) {
	entries, err := ParseTokens([]byte(`
tokens:
  - token: aaaaaaaaaaaaaaaa1
    client: alice
    names: [app, api]
  - token: bbbbbbbbbbbbbbbb2
    forward: false
    names: []
  - token: cccccccccccccccc3
`))
	if err != nil {
		t.Fatal(err)
	}
	auth := authorizer(entries)
	g, ok := auth("aaaaaaaaaaaaaaaa1")
	if !ok || g.Client != "alice" || !slices.Equal(g.Names, []string{"app", "api"}) || g.NoForward {
		t.Errorf("alice: %+v %v", g, ok)
	}
	g, ok = auth("bbbbbbbbbbbbbbbb2")
	if !ok || !g.NoForward || g.Names == nil || len(g.Names) != 0 {
		t.Errorf("b: %+v %v", g, ok)
	}
	if g, ok := auth("cccccccccccccccc3"); !ok || g.Names != nil || g.NoForward {
		t.Errorf("c: %+v %v", g, ok)
	}
	if _, ok := auth("wrong"); ok {
		t.Error("a wrong token was accepted")
	}

	// Client certificates: the identity picks the entry by client name;
	// an entry without a token serves certificates only.
	entries, err = ParseTokens([]byte("tokens:\n  - token: aaaaaaaaaaaaaaaa1\n    client: alice\n    names: [app]\n" +
		"  - client: bob\n    forward: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	certAuth := certAuthorizer(entries)
	if g, ok := certAuth("alice"); !ok || !slices.Equal(g.Names, []string{"app"}) {
		t.Errorf("certificate alice: %+v %v", g, ok)
	}
	if g, ok := certAuth("bob"); !ok || !g.NoForward {
		t.Errorf("certificate bob: %+v %v", g, ok)
	}
	if _, ok := certAuth("carol"); ok {
		t.Error("a certificate without an entry was accepted")
	}
	if _, ok := authorizer(entries)(""); ok {
		t.Error("the empty token was accepted because of a certificate-only entry")
	}

	for _, bad := range []string{
		"tokens: []",
		"tokens:\n  - token: short",
		"tokens:\n  - names: [app]", // neither token nor client
		"tokens:\n  - token: aaaaaaaaaaaaaaaa1\n  - token: aaaaaaaaaaaaaaaa1",
		"tokens:\n  - token: aaaaaaaaaaaaaaaa1\n    names: [bad_name]",
		"not yaml: [",
	} {
		if _, err := ParseTokens([]byte(bad)); err == nil {
			t.Errorf("ParseTokens(%q) accepted", bad)
		}
	}
}

// FuzzParseTokens checks the tokens-file parser never panics and that
// every token it accepts authorizes.
func FuzzParseTokens(f *testing.F) {
	f.Add("tokens:\n  - token: aaaaaaaaaaaaaaaa1\n    names: [app]\n")
	f.Add("tokens:\n  - {token: bbbbbbbbbbbbbbbb2, forward: false}\n")
	f.Fuzz(func(t *testing.T, s string) {
		entries, err := ParseTokens([]byte(s))
		if err != nil {
			return
		}
		auth, certAuth := authorizer(entries), certAuthorizer(entries)
		for _, e := range entries {
			if e.Token == "" {
				if _, ok := certAuth(e.Client); !ok {
					t.Fatalf("certificate entry %q from %q does not authorize", e.Client, s)
				}
				continue
			}
			if _, ok := auth(e.Token); !ok {
				t.Fatalf("token %q from %q does not authorize", e.Token, s)
			}
		}
	})
}

func TestCheckCertEntries(t *testing.T) {
	tok := TokenEntry{Token: "0123456789abcdef", Client: "alice"}
	cert := TokenEntry{Client: "bob-laptop"}
	for _, tc := range []struct {
		name      string
		entries   []TokenEntry
		clientCAs bool
		wantErr   bool
		wantWarn  bool
	}{
		{"tokens only", []TokenEntry{tok}, false, false, false},
		{"certificates with --client-ca", []TokenEntry{cert}, true, false, false},
		{"only certificates, no --client-ca", []TokenEntry{cert}, false, true, false},
		{"some certificates, no --client-ca", []TokenEntry{tok, cert}, false, false, true},
		{"a single token, no file", nil, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logged bytes.Buffer
			err := checkCertEntries(tc.entries, tc.clientCAs, slog.New(slog.NewTextHandler(&logged, nil)))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tc.wantErr)
			}
			if warned := strings.Contains(logged.String(), "bob-laptop"); warned != tc.wantWarn {
				t.Fatalf("warning %q, want one: %v", logged.String(), tc.wantWarn)
			}
		})
	}
}
