package engine

import "sync"

// connState is the transport's connection as the engine sees it: which generation is live, and
// whether its session is persistent (the broker delivers an unacknowledged QoS 1 message again).
type connState struct {
	mu      sync.Mutex
	gen     uint64 // 0 while offline
	persist bool
	// failed is a generation on which a received message's receipt was released with an error:
	// the transport acknowledges neither it nor anything after it, and the broker sends them all
	// again on the next connection, in their order. Nothing more that arrives on it is taken, or a
	// newer message applied now would be followed by the older one sent again, read as newer.
	failed uint64
}

// fail marks gen as a connection on which a receipt failed. Generations only grow: an older
// connection's failure, reported late, must not unmark a newer one.
func (c *connState) fail(gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed = max(c.failed, gen)
}

// hasFailed reports whether a receipt failed on connection gen.
func (c *connState) hasFailed(gen uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return gen != 0 && c.failed == gen
}

func (c *connState) persistent() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.persist
}

func (c *connState) current() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// Online tells the engine that connection gen is up and subscribed to Filters; persistent says the
// broker keeps its session across a disconnect. The engine asks for the latest configuration of
// every endpoint on it.
func (e *Engine) Online(gen uint64, persistent bool) {
	e.conn.mu.Lock()
	e.conn.gen, e.conn.persist = gen, persistent
	e.conn.mu.Unlock()
	e.request(gen, e.endpointList())
}

// Offline tells the engine that connection gen has ended: its requests are dropped, and repeats
// scheduled on it stop.
func (e *Engine) Offline(gen uint64) {
	e.conn.mu.Lock()
	if e.conn.gen == gen {
		e.conn.gen = 0
	}
	e.conn.mu.Unlock()
	e.out.dropRequests(gen)
	for _, ep := range e.endpointList() {
		ep.req.cancel(gen)
	}
}
