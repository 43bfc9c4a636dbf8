package coordinator

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"gopkg.in/yaml.v3"

	"quictunnel/quictun"
)

// TokenEntry is one client's entry in a tokens file.
type TokenEntry struct {
	// Token is the secret; at least 16 characters. An entry without one
	// serves only the client with a certificate (ClientCAs) naming Client.
	Token string `yaml:"token"`
	// Client names the client in logs. Default: the name it gives.
	Client string `yaml:"client"`
	// Names lists the service names it may expose. Default (absent):
	// any; an empty list: none.
	Names *[]string `yaml:"names"`
	// Forward allows the forward proxy (dialing targets). Default true.
	Forward *bool `yaml:"forward"`
}

// minTokenLen is the shortest token a tokens file may hold.
const minTokenLen = 16

// ParseTokens parses a tokens file:
//
//	tokens:
//	  - token: 8f1c...            # at least 16 characters; may be absent with client
//	    client: alice-laptop      # optional; with client certificates, the certificate's name
//	    names: [app, api]         # optional: service names it may expose
//	    forward: false            # optional: no forward proxy
func ParseTokens(data []byte) ([]TokenEntry, error) {
	var f struct {
		Tokens []TokenEntry `yaml:"tokens"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	if len(f.Tokens) == 0 {
		return nil, fmt.Errorf("tokens file: no tokens (want a list under \"tokens:\")")
	}
	seen := map[string]bool{}
	for i, e := range f.Tokens {
		switch {
		case e.Token == "" && e.Client != "":
			// For a client certificate naming e.Client.
		case e.Token == "":
			return nil, fmt.Errorf("tokens file: entry %d: neither token nor client", i+1)
		case len(e.Token) < minTokenLen:
			return nil, fmt.Errorf("tokens file: entry %d: token shorter than %d characters", i+1, minTokenLen)
		case seen[e.Token]:
			return nil, fmt.Errorf("tokens file: entry %d: token listed twice", i+1)
		}
		if e.Names != nil {
			for _, n := range *e.Names {
				if !quictun.ValidServiceName(n) {
					return nil, fmt.Errorf("tokens file: entry %d: %q is not a valid service name", i+1, n)
				}
			}
		}
		if e.Token != "" {
			seen[e.Token] = true
		}
	}
	return f.Tokens, nil
}

// checkCertEntries refuses tokens whose every entry is for a client
// certificate when client certificates are not asked for (no --client-ca):
// no client could connect. Some such entries among tokens are only
// warned about.
func checkCertEntries(entries []TokenEntry, clientCAs bool, log *slog.Logger) error {
	if clientCAs || len(entries) == 0 {
		return nil
	}
	var certOnly []string
	for _, e := range entries {
		if e.Token == "" {
			certOnly = append(certOnly, e.Client)
		}
	}
	switch {
	case len(certOnly) == len(entries):
		return errors.New("every tokens file entry is for a client certificate (no token), but client certificates are not asked for: give --client-ca, or tokens")
	case len(certOnly) > 0:
		log.Warn("tokens file entries without a token are for client certificates, which are not asked for (no --client-ca): these clients cannot connect",
			"clients", certOnly)
	}
	return nil
}

// grant is what e allows.
func (e TokenEntry) grant() quictun.Grant {
	g := quictun.Grant{Client: e.Client}
	if e.Names != nil {
		g.Names = append([]string{}, *e.Names...)
	}
	if e.Forward != nil && !*e.Forward {
		g.NoForward = true
	}
	return g
}

// certAuthorizer gives a client certificate's identity the grant of the
// first entry whose client it is; identities without an entry are refused.
func certAuthorizer(entries []TokenEntry) func(string) (quictun.Grant, bool) {
	grants := map[string]quictun.Grant{}
	for _, e := range entries {
		if _, dup := grants[e.Client]; e.Client != "" && !dup {
			grants[e.Client] = e.grant()
		}
	}
	return func(id string) (quictun.Grant, bool) {
		g, ok := grants[id]
		return g, ok
	}
}

// LoadTokens reads and parses a tokens file.
func LoadTokens(path string) ([]TokenEntry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokens file: %w", err)
	}
	return ParseTokens(data)
}

// authorizer checks a presented token against every entry in constant
// time (hashes are compared, so the time does not depend on lengths).
func authorizer(entries []TokenEntry) func(string) (quictun.Grant, bool) {
	type hashed struct {
		sum   [32]byte
		grant quictun.Grant
	}
	var list []hashed
	for _, e := range entries {
		if e.Token != "" { // entries without a token are for certificates only
			list = append(list, hashed{sha256.Sum256([]byte(e.Token)), e.grant()})
		}
	}
	return func(token string) (quictun.Grant, bool) {
		sum := sha256.Sum256([]byte(token))
		var found quictun.Grant
		ok := 0
		for _, h := range list {
			if subtle.ConstantTimeCompare(sum[:], h.sum[:]) == 1 {
				found, ok = h.grant, 1
			}
		}
		return found, ok == 1
	}
}
