package agent

import (
	"context"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// inbox hands a connection's messages to the agent one at a time, in the order the broker sent
// them. Order is what makes "the newest push wins" true: with a goroutine per message (paho's
// unordered mode) a burst commits in random order, and an older push can supersede the newest.
//
// paho's ordered mode runs the handler on its router goroutine, and a handler that blocks there
// while acknowledging deadlocks paho. So the handler only appends here and returns at once, and one
// goroutine per connection commits and acknowledges. The queue is bounded by the broker's in-flight
// window for QoS 1; QoS 0 messages beyond maxQoS0Backlog are dropped, which QoS 0 allows.
type inbox struct {
	mu     sync.Mutex
	msgs   []mqtt.Message
	wake   chan struct{}
	closed bool
}

const maxQoS0Backlog = 1000

func newInbox() *inbox { return &inbox{wake: make(chan struct{}, 1)} }

// add queues m; it never blocks. It reports false when a QoS 0 message was dropped.
func (q *inbox) add(m mqtt.Message) bool {
	q.mu.Lock()
	if q.closed || m.Qos() == 0 && len(q.msgs) >= maxQoS0Backlog {
		q.mu.Unlock()
		return false
	}
	q.msgs = append(q.msgs, m)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// close stops the queue: run returns once the message in hand is done. Messages still queued were
// not acknowledged, and the broker sends them again on the next connection.
func (q *inbox) close() {
	q.mu.Lock()
	q.closed = true
	q.msgs = nil
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// run passes each message to handle, in order, until ctx ends or the queue is closed.
func (q *inbox) run(ctx context.Context, handle func(mqtt.Message)) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return
		}
		var m mqtt.Message
		if len(q.msgs) > 0 {
			m = q.msgs[0]
			q.msgs[0] = nil
			q.msgs = q.msgs[1:]
		}
		q.mu.Unlock()
		if m != nil {
			handle(m)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
		}
	}
}
