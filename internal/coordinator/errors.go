package coordinator

import (
	"fmt"

	"quictunnel/quictun"
)

// ConfigError reports an invalid Config field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("coordinator: config %s: %s", e.Field, e.Reason)
}

// ErrRegistryUnavailable refuses a claim (a name, a port) while this
// cluster node cannot reach the cluster registry or its lease is not
// current: names held stay served, new ones wait for etcd.
// It is a quictun.ErrTryLater: the client asks again.
var ErrRegistryUnavailable error = registryUnavailable{}

type registryUnavailable struct{}

func (registryUnavailable) Error() string        { return "cluster registry unavailable" }
func (registryUnavailable) Is(target error) bool { return target == quictun.ErrTryLater }
