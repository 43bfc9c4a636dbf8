package httpproxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// The forwarding fields tell an app behind the reverse proxy who asked and
// how: Forwarded (RFC 7239), X-Forwarded-For, X-Forwarded-Proto,
// X-Forwarded-Host, X-Forwarded-Port and X-Real-IP. Apps trust them, so a
// public client must not be able to write them: every one is removed from
// the request as received and written afresh from what the connection
// shows. Only a peer in ReverseConfig.TrustedProxies (a load balancer in
// front of the public port) has its fields kept: the chains (Forwarded,
// X-Forwarded-For) get this hop appended, and its single-valued fields
// stand, ours filling in those it did not send.

// forwardingNames are the fields forwardingFields replaces, in lower case.
var forwardingNames = []string{"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
	"x-forwarded-port", "x-real-ip"}

// trustedPeer reports whether remote is one of the trusted proxies.
func trustedPeer(trusted []netip.Prefix, remote netip.Addr) bool {
	return slices.ContainsFunc(trusted, func(p netip.Prefix) bool { return p.Contains(remote) })
}

// forwardingFields builds the forwarding fields, as header lines, for a
// request from remote for host over proto. When trusted, the request's
// own forwarding fields are kept as described above; otherwise they are
// ignored (and dropped: forwardingNames).
func forwardingFields(h *head, remote netip.AddrPort, host, proto string, trusted bool) []string {
	ip := remote.Addr().String()
	node := ip
	if remote.Addr().Is6() {
		node = `"[` + ip + `]"`
	}
	xff, fwd := ip, fmt.Sprintf("for=%s;host=%q;proto=%s", node, host, proto)
	realIP, xfProto, xfHost, xfPort := ip, proto, host, ""
	if trusted {
		if prior := h.joined("X-Forwarded-For"); prior != "" {
			xff = prior + ", " + ip
			// The last hop the trusted proxy names is its own client.
			if a, err := netip.ParseAddr(strings.TrimSpace(prior[strings.LastIndexByte(prior, ',')+1:])); err == nil {
				realIP = a.String()
			}
		}
		if prior := h.joined("Forwarded"); prior != "" {
			fwd = prior + ", " + fwd
		}
		realIP = h.nonEmpty("X-Real-IP", realIP)
		xfProto = h.nonEmpty("X-Forwarded-Proto", xfProto)
		xfHost = h.nonEmpty("X-Forwarded-Host", xfHost)
		xfPort = h.nonEmpty("X-Forwarded-Port", "")
	}
	fields := []string{"X-Forwarded-For: " + xff, "X-Forwarded-Proto: " + xfProto, "X-Forwarded-Host: " + xfHost}
	if xfPort != "" {
		fields = append(fields, "X-Forwarded-Port: "+xfPort)
	}
	return append(fields, "X-Real-IP: "+realIP, "Forwarded: "+fwd)
}

// joined returns the non-empty values of the fields named name, joined
// with ", " as one list (RFC 9110 §5.3).
func (h *head) joined(name string) string {
	var vs []string
	for _, f := range h.fields {
		if strings.EqualFold(f.name, name) && f.value != "" {
			vs = append(vs, f.value)
		}
	}
	return strings.Join(vs, ", ")
}

// nonEmpty returns the value of the first field named name, or def when
// there is none or it is empty.
func (h *head) nonEmpty(name, def string) string {
	if v, ok := h.get(name); ok && v != "" {
		return v
	}
	return def
}
