package main

import (
	"errors"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"quictunnel/internal/service"
	"quictunnel/natt"
)

// checkSettings is what "reporter check-config FILE" checks beyond every
// service's checks: the values reporter would refuse at start.
func checkSettings(c *cli.Context) error {
	interval := c.Int64("keepalive-interval")
	if interval <= 0 {
		return &service.SettingError{Setting: "--keepalive-interval", Value: strconv.FormatInt(interval, 10),
			Reason: "must be a positive number of milliseconds (also $NAT_KEEP_ALIVE_INTERVAL)"}
	}
	_, err := natt.NewServer(natt.ServerConfig{KeepAliveInterval: time.Duration(interval) * time.Millisecond, MaxMisses: c.Int("keepalive-misses")})
	if e, ok := errors.AsType[*natt.ConfigError](err); ok {
		return service.FieldFlags{"KeepAliveInterval": "keepalive-interval", "MaxMisses": "keepalive-misses"}.Setting(e.Field, e.Reason, err)
	}
	return err
}
