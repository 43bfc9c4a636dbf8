package main

import (
	"fmt"
	"strconv"

	"github.com/urfave/cli/v2"

	"quictunnel/internal/localproxy"
	"quictunnel/internal/service"
	"quictunnel/quictun"
)

// checkSettings is what "localproxy check-config FILE" checks beyond every
// service's checks: the combinations and values localproxy would refuse at
// start, found without opening a file or a socket.
func checkSettings(c *cli.Context) error {
	if k := c.Int64("keepalive-interval"); k <= 0 {
		return &service.SettingError{Setting: "--keepalive-interval", Value: strconv.FormatInt(k, 10),
			Reason: "must be a positive number of milliseconds (also $NAT_KEEP_ALIVE_INTERVAL)"}
	}
	if c.String("proxy-auth") != "" && c.String("proxy-auth-file") != "" {
		return service.Usage(fmt.Errorf("give --proxy-auth or --proxy-auth-file, not both"))
	}
	var services []quictun.ExposedService
	for _, f := range []struct {
		flag string
		kind quictun.ServiceKind
	}{{"expose", quictun.ServiceHTTP}, {"expose-tcp", quictun.ServiceTCP}} {
		for _, spec := range c.StringSlice(f.flag) {
			svc, err := localproxy.ParseExpose(spec, f.kind)
			if err != nil {
				return service.Usage(fmt.Errorf("--%s: %w", f.flag, err))
			}
			services = append(services, svc)
		}
	}
	if err := localproxy.ApplyHostHeaders(services, c.StringSlice("host-header")); err != nil {
		return service.Usage(fmt.Errorf("--%w", err))
	}
	if err := localproxy.ApplyBasicAuth(services, c.StringSlice("basic-auth")); err != nil {
		return service.Usage(fmt.Errorf("--%w", err))
	}
	if err := localproxy.ApplyAllowFrom(services, c.StringSlice("allow-from")); err != nil {
		return service.Usage(fmt.Errorf("--%w", err))
	}
	if _, err := localproxy.ParseCoordinators(c.String("coordinator"), c.String("coordinator-tcp")); err != nil {
		return settingError(err)
	}
	if err := localproxy.CheckTransport(c.String("transport"), c.String("upstream-proxy")); err != nil {
		return settingError(err)
	}
	certFile, keyFile := c.String("client-cert"), c.String("client-key")
	if (certFile == "") != (keyFile == "") {
		return &service.SettingError{Setting: "--client-cert", Reason: "give --client-cert and --client-key together"}
	}
	if c.String("token") == "" && certFile == "" {
		return &service.SettingError{Setting: "--token", Reason: "required: give --token, $LOCALPROXY_TOKEN or \"token:\" in the --config file " +
			"(or a client certificate: --client-cert and --client-key)"}
	}
	return nil
}
