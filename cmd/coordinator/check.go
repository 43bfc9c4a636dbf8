package main

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/urfave/cli/v2"

	"quictunnel/internal/coordinator"
	"quictunnel/internal/dnshook"
	"quictunnel/internal/service"
)

// checkSettings is what "coordinator check-config FILE" checks beyond
// every service's checks: the combinations and values coordinator would
// refuse at start, found without opening a file or a socket.
func checkSettings(c *cli.Context) error {
	if err := checkCertSettings(c); err != nil {
		return err
	}
	switch c.String("role") {
	case "all":
		if c.String("token") == "" && c.String("tokens") == "" && c.String("client-ca") == "" {
			return &service.SettingError{Setting: "--token", Reason: "required: set --token (one shared secret), --tokens FILE (per-client tokens) or --client-ca FILE (client certificates)"}
		}
	case "dialback":
		if c.String("coordinator") == "" || c.String("worker-token") == "" {
			return &service.SettingError{Setting: "--role", Value: "dialback", Reason: "needs --coordinator HOST:PORT and --worker-token (the same as coordinator's)"}
		}
		for _, a := range c.StringSlice("advertise") {
			if _, err := netip.ParseAddrPort(a); err != nil {
				return service.Usage(fmt.Errorf("--advertise %q: want ip:port: %w", a, err))
			}
		}
	default:
		return &service.SettingError{Setting: "--role", Value: c.String("role"), Reason: "want all or dialback"}
	}
	if r := c.String("port-range"); r != "" {
		if _, err := coordinator.ParsePortRange(r); err != nil {
			return service.Usage(fmt.Errorf("--port-range: %w", err))
		}
	}
	if c.Bool("http-to-https") && (c.String("http") == "" || c.String("https") == "") {
		return &service.SettingError{Setting: "--http-to-https", Reason: "needs --http (the port that redirects) and --https (where to)"}
	}
	if (c.String("https-cert") == "") != (c.String("https-key") == "") {
		return &service.SettingError{Setting: "--https-cert", Reason: "set both --https-cert and --https-key, or neither (then --cert and --key serve HTTPS too)"}
	}
	if c.String("https") == "" && c.String("https-cert") != "" {
		return &service.SettingError{Setting: "--https-cert", Reason: "needs --https ADDRESS"}
	}
	if _, err := coordinator.ParseTrustedProxies(c.StringSlice("trusted-proxies")); err != nil {
		return service.Usage(fmt.Errorf("--trusted-proxies: %w", err))
	}
	return nil
}

// checkCertSettings checks where coordinator's certificate comes from:
// --cert and --key, or --acme-email (not for --role dialback, whose
// certificate must be coordinator's own).
func checkCertSettings(c *cli.Context) error {
	acme := c.String("acme-email") != ""
	switch {
	case acme && c.String("role") == "dialback":
		return &service.SettingError{Setting: "--acme-email", Reason: "not with --role dialback: a worker presents coordinator's certificate, so give it --cert and --key"}
	case acme && (c.String("cert") != "" || c.String("key") != ""):
		return &service.SettingError{Setting: "--acme-email", Reason: "set either --acme-email (automatic certificates) or --cert and --key, not both"}
	case !acme && (c.String("cert") == "" || c.String("key") == ""):
		return &service.SettingError{Setting: "--cert", Reason: "required: set --cert and --key (a key pair), or --acme-email (automatic certificates)"}
	}
	return checkDNSHook(c, acme)
}

// checkDNSHook checks the DNS-01 setup: a hook that is an executable
// file, only with --acme-email, and resolvers only with a hook.
func checkDNSHook(c *cli.Context, acme bool) error {
	hook, resolvers := c.String("acme-dns-hook"), c.StringSlice("acme-dns-resolvers")
	switch {
	case hook == "" && len(resolvers) > 0:
		return &service.SettingError{Setting: "--acme-dns-resolvers", Reason: "needs --acme-dns-hook"}
	case hook == "":
		return nil
	case !acme:
		return &service.SettingError{Setting: "--acme-dns-hook", Value: hook, Reason: "needs --acme-email"}
	}
	if c.String("https") != "" && c.String("https-cert") == "" {
		if err := checkWildcardDomain(c.String("domain")); err != nil {
			return err
		}
	}
	_, err := dnshook.New(dnshook.Config{Path: hook, Resolvers: resolvers})
	e, ok := errors.AsType[*dnshook.ConfigError](err)
	switch {
	case !ok:
		return err
	case e.Field == "Resolvers":
		return &service.SettingError{Setting: "--acme-dns-resolvers", Reason: e.Reason}
	default:
		return &service.SettingError{Setting: "--acme-dns-hook", Value: hook, Reason: e.Reason}
	}
}
