package localproxy

import (
	"fmt"
	"net"
	"strings"

	"quictunnel/quictun"
)

// maxCoordinators bounds the --coordinator list: each is dialed at every
// connection attempt.
const maxCoordinators = 16

// ParseCoordinators parses --coordinator and --coordinator-tcp: each a
// comma-separated list of host:port. tcp, when set, names each
// coordinator's TCP transport in the same order; "" means the QUIC
// address. A host name that resolves to several addresses is expanded
// when connecting (see quictun.ClientConfig.Coordinators).
func ParseCoordinators(quic, tcp string) ([]quictun.Node, error) {
	addrs, err := splitAddrs(quic)
	if err != nil {
		return nil, &ConfigError{"Coordinator", err.Error()}
	}
	nodes := make([]quictun.Node, len(addrs))
	for i, a := range addrs {
		nodes[i].Addr = a
	}
	if tcp == "" {
		return nodes, nil
	}
	tcpAddrs, err := splitAddrs(tcp)
	if err != nil {
		return nil, &ConfigError{"CoordinatorTCP", err.Error()}
	}
	if len(tcpAddrs) != len(addrs) {
		return nil, &ConfigError{"CoordinatorTCP", fmt.Sprintf("%d addresses for %d coordinators: give one per coordinator, in the same order",
			len(tcpAddrs), len(addrs))}
	}
	for i, a := range tcpAddrs {
		nodes[i].TCP = a
	}
	return nodes, nil
}

// splitAddrs splits a comma-separated list of distinct host:port.
func splitAddrs(list string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return nil, fmt.Errorf("required (host:port of coordinator, or several: A,B,C)")
	}
	parts := strings.Split(list, ",")
	if len(parts) > maxCoordinators {
		return nil, fmt.Errorf("%d addresses, at most %d", len(parts), maxCoordinators)
	}
	seen := map[string]bool{}
	for i, p := range parts {
		p = strings.TrimSpace(p)
		host, port, err := net.SplitHostPort(p)
		switch {
		case err != nil || host == "" || port == "":
			return nil, fmt.Errorf("want host:port, got %q", p)
		case seen[p]:
			return nil, fmt.Errorf("%s is listed twice", p)
		}
		seen[p] = true
		parts[i] = p
	}
	return parts, nil
}

// formatCoordinators is ParseCoordinators' inverse.
func formatCoordinators(nodes []quictun.Node) (quic, tcp string) {
	var q, t []string
	for _, n := range nodes {
		q = append(q, n.Addr)
		t = append(t, n.TCP)
	}
	if strings.Join(t, "") == "" {
		return strings.Join(q, ","), ""
	}
	return strings.Join(q, ","), strings.Join(t, ",")
}
