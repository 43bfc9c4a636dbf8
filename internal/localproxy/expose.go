package localproxy

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"quictunnel/quictun"
)

// ParseExpose parses an --expose (kind http) or --expose-tcp (kind tcp)
// value: NAME=HOST:PORT[:PUBLICPORT]. For tcp the public port is required
// (0 lets coordinator choose); for http it is optional and asks for a
// dedicated public port besides NAME.DOMAIN.
func ParseExpose(spec string, kind quictun.ServiceKind) (quictun.ExposedService, error) {
	var svc quictun.ExposedService
	name, rest, ok := strings.Cut(spec, "=")
	if !ok {
		return svc, fmt.Errorf("expose %q: want NAME=HOST:PORT%s", spec, map[bool]string{true: ":PUBLICPORT", false: "[:PUBLICPORT]"}[kind == quictun.ServiceTCP])
	}
	if !quictun.ValidServiceName(name) {
		return svc, fmt.Errorf("expose %q: name %q must be 1-63 letters, digits or '-'", spec, name)
	}
	local, public := rest, ""
	// HOST:PORT:PUBLICPORT has one colon more than HOST:PORT (IPv6 hosts
	// are bracketed, so their colons sit inside the brackets).
	if i := strings.LastIndexByte(rest, ':'); i > 0 && strings.Count(rest[strings.LastIndexByte(rest, ']')+1:], ":") == 2 {
		local, public = rest[:i], rest[i+1:]
	}
	host, port, err := net.SplitHostPort(local)
	if err != nil || host == "" {
		return svc, fmt.Errorf("expose %q: local app %q: want HOST:PORT", spec, local)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return svc, fmt.Errorf("expose %q: local port %q is not a port number", spec, port)
	}
	svc = quictun.ExposedService{Kind: kind, Name: name, Local: local}
	switch {
	case public != "":
		p, err := strconv.ParseUint(public, 10, 16)
		if err != nil {
			return quictun.ExposedService{}, fmt.Errorf("expose %q: public port %q is not a port number", spec, public)
		}
		svc.Port = uint16(p)
	case kind == quictun.ServiceTCP:
		return quictun.ExposedService{}, fmt.Errorf("expose-tcp %q: want NAME=HOST:PORT:PUBLICPORT (PUBLICPORT 0 lets coordinator choose)", spec)
	}
	return svc, nil
}

// ApplyHostHeaders applies --host-header values, NAME=VALUE, to the
// exposed HTTP services: their app's requests get Host: VALUE, where
// "rewrite" stands for the app's own HOST:PORT.
func ApplyHostHeaders(services []quictun.ExposedService, specs []string) error {
	return applyTo(services, specs, "host-header", "NAME=rewrite or NAME=HOST[:PORT]", true, func(svc *quictun.ExposedService, value string) error {
		if svc.HostHeader != "" {
			return fmt.Errorf("%s has a Host header already", svc.Name)
		}
		if value == "rewrite" {
			value = svc.Local
		}
		if !quictun.ValidHostHeader(value) {
			return fmt.Errorf("%q is not a HOST or HOST:PORT", value)
		}
		svc.HostHeader = value
		return nil
	})
}

// ApplyBasicAuth applies --basic-auth values, NAME=USER:PASSWORD, to the
// exposed HTTP services: coordinator asks the public for these
// credentials before a request reaches the app.
func ApplyBasicAuth(services []quictun.ExposedService, specs []string) error {
	return applyTo(services, specs, "basic-auth", "NAME=USER:PASSWORD", true, func(svc *quictun.ExposedService, value string) error {
		if svc.BasicAuth != nil {
			return fmt.Errorf("%s has credentials already", svc.Name)
		}
		user, pass, ok := strings.Cut(value, ":")
		if !ok || user == "" || pass == "" {
			return fmt.Errorf("want USER:PASSWORD, both non-empty")
		}
		svc.BasicAuth = quictun.HashCredentials(user, pass)
		return nil
	})
}

// ApplyAllowFrom applies --allow-from values, NAME=CIDR[,CIDR...], to
// the exposed services (HTTP and TCP): coordinator refuses public clients
// from other addresses. A NAME given again adds to its list.
func ApplyAllowFrom(services []quictun.ExposedService, specs []string) error {
	return applyTo(services, specs, "allow-from", "NAME=CIDR[,CIDR...]", false, func(svc *quictun.ExposedService, value string) error {
		prefixes, err := quictun.ParseAllowFrom(value)
		if err != nil {
			return err
		}
		svc.AllowFrom = append(svc.AllowFrom, prefixes...)
		return nil
	})
}

// applyTo runs apply for each NAME=VALUE among values, on the service
// NAME (an HTTP one if httpOnly). The flag parser cuts every value at its
// commas (that is how one environment variable carries several values),
// so a piece without "=" is put back onto the one before it. Errors name
// the flag but never the value (it may be a password).
func applyTo(services []quictun.ExposedService, values []string, flag, want string, httpOnly bool,
	apply func(*quictun.ExposedService, string) error) error {
	var specs []string
	for _, v := range values {
		if !strings.Contains(v, "=") && len(specs) > 0 {
			specs[len(specs)-1] += "," + v
			continue
		}
		specs = append(specs, v)
	}
	for _, spec := range specs {
		name, value, ok := strings.Cut(spec, "=")
		if !ok || value == "" {
			return fmt.Errorf("%s: want %s", flag, want)
		}
		i := slices.IndexFunc(services, func(s quictun.ExposedService) bool {
			return s.Name == name && (s.Kind == quictun.ServiceHTTP || !httpOnly)
		})
		switch {
		case i < 0 && httpOnly:
			return fmt.Errorf("%s for %q: no app is exposed as %q with --expose", flag, name, name)
		case i < 0:
			return fmt.Errorf("%s for %q: nothing is exposed as %q with --expose or --expose-tcp", flag, name, name)
		}
		if err := apply(&services[i], value); err != nil {
			return fmt.Errorf("%s for %q: %w", flag, name, err)
		}
	}
	return nil
}
