// Package natlab builds a real NAT lab out of Linux network namespaces, veth
// pairs and iptables/ip6tables rules, for end-to-end tests of programs that
// live behind a NAT (localproxy) and talk to public hosts (reporter,
// coordinator). Packets cross the kernel's own conntrack and MASQUERADE, so
// the behaviour is the measured one docs/natlab.md describes: endpoint-independent mapping with address-and-port-dependent
// filtering, or a symmetric mapping with --random-fully.
//
// Topology (every box is a network namespace named <prefix><name>, every line
// a veth pair whose two ends both lie in lab namespaces; nothing is connected
// to the root namespace):
//
//	     private LAN 198.18.0.0/24, 2001:db8:1::/64      public segment B 203.0.113.0/24, 2001:db8:b::/64
//	+----------------+          +---------------------+          +---------------------------+
//	| client         |          | nat (home router)   |          | internet (router)         |
//	|           eth0 +----------+ lan             wan +----------+ nat    bridge seg-b:      |
//	| 198.18.0.2     |          | 198.18.0.1          |          |          203.0.113.1      |
//	| 2001:db8:1::2  |          | 2001:db8:1::1       |          |          2001:db8:b::1    |
//	| default via    |          |         203.0.113.2 |          |        bridge seg-a:      |
//	|   198.18.0.1   |          |       2001:db8:b::2 |          |          198.51.100.1     |
//	+----------------+          | MASQUERADE -o wan   |          |          2001:db8:a::1    |
//	                            | FORWARD: drop new   |          |  pub1  pub2  pub3  pub4   |
//	                            |   inbound           |          +---+-----+-----+-----+-----+
//	                            +---------------------+              |     |     |     |
//	           pub1 (seg-a) eth0 198.51.100.10  2001:db8:a::10  -----+     |     |     |
//	           pub2 (seg-b) eth0 203.0.113.20   2001:db8:b::20  -----------+     |     |
//	           pub3 (seg-a) eth0 198.51.100.30  2001:db8:a::30  -----------------+     |
//	           pub4 (seg-b) eth0 203.0.113.40   2001:db8:b::40  -----------------------+
//
// Public host i (1-based) has the address 10*i in its segment: odd hosts on
// 198.51.100.0/24 and 2001:db8:a::/64, even hosts on 203.0.113.0/24 and
// 2001:db8:b::/64. Public hosts and the nat namespace route by default to the
// internet namespace, which has only its connected segments and no default
// route, so nothing can leave the lab. No public host has a route to
// 198.18.0.0/24. With IPv6Firewall the internet namespace routes
// 2001:db8:1::/64 to the NAT's WAN address (a routed home network); with
// IPv6NAT66 it does not (the LAN prefix is private and translated).
//
// The nat namespace forwards, drops new inbound connections in FORWARD (only
// established/related traffic and LAN-to-WAN traffic pass) and masquerades
// everything that leaves through wan. Its conntrack table is the NAT's
// mapping table: [Lab.FlushConntrack] forgets all mappings,
// [Lab.SetUDPTimeout] sets how long an idle one lives.
//
// Sockets are opened inside a namespace by [Host.ListenUDP], [Host.ListenTCP]
// and [Host.DialTCP]; programs run inside one with [Host.Command] and
// [Host.Start]. Everything a [Lab] creates is removed in the test's cleanup,
// even when the test fails or panics, and [Sweep] removes what crashed runs
// left behind. The lab needs root and
// the ip (iproute2), iptables, ip6tables and conntrack commands.
package natlab
