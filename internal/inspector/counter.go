package inspector

import "sync/atomic"

type counter struct{ n atomic.Int64 }

func (c *counter) add(n int)   { c.n.Add(int64(n)) }
func (c *counter) load() int64 { return c.n.Load() }
