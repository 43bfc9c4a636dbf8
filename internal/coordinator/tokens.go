package coordinator

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"

	"quictunnel/quictun"
)

// TokenEntry is one client's entry in a tokens file.
type TokenEntry struct {
	// Token is the secret; at least 16 characters.
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
//	  - token: 8f1c...            # required, at least 16 characters
//	    client: alice-laptop      # optional
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
		seen[e.Token] = true
	}
	return f.Tokens, nil
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
	list := make([]hashed, len(entries))
	for i, e := range entries {
		g := quictun.Grant{Client: e.Client}
		if e.Names != nil {
			g.Names = append([]string{}, *e.Names...)
		}
		if e.Forward != nil && !*e.Forward {
			g.NoForward = true
		}
		list[i] = hashed{sha256.Sum256([]byte(e.Token)), g}
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
