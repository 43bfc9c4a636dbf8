// Package httpproxy is the HTTP side of the tunnel.
//
// [Proxy] is the browser-facing forward proxy: absolute-form requests
// (GET http://host/path) and CONNECT tunnels. It relays messages by hand
// rather than through net/http, so every header line reaches the target
// byte for byte, in order, with its case, and bodies stream both ways in
// their original framing with flat memory. Hop-by-hop fields (RFC 9110
// §7.6.1: Connection and the fields it names, Proxy-Connection,
// Keep-Alive, TE except "trailers", Upgrade except on upgrades,
// Proxy-Authorization, Proxy-Authenticate) are dropped. Ambiguous framing
// that request smuggling relies on is refused with 400.
//
// [ReverseProxy] is the public side of exposed apps. On a TLS connection
// that negotiated "h2" in ALPN it serves HTTP/2 (golang.org/x/net/http2):
// each request is converted into the HTTP/1.1 head the rest of the proxy
// takes, and reaches the app as HTTP/1.1.
//
// Targets are reached through a [Dialer]: the tunnel in production, a
// plain net.Dialer in tests. A [DialError] chooses the status the browser
// sees (502, 503, 504, ...).
package httpproxy
