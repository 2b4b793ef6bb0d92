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
//
// Only messages with the same key (the endpoint token) need that order. run takes what has queued
// up and hands each key's messages, in order, to a goroutine of its own, so that a burst to many
// endpoints is committed concurrently, which lets Store.Batch group the commits: one transaction
// for a fan-out's worth of pushes instead of one each.
type inbox struct {
	key func(mqtt.Message) string

	mu     sync.Mutex
	msgs   []mqtt.Message
	wake   chan struct{}
	closed bool
}

const maxQoS0Backlog = 1000

// newInbox returns an inbox that keeps the order of messages with the same key; a nil key keeps
// the order of all.
func newInbox(key func(mqtt.Message) string) *inbox {
	if key == nil {
		key = func(mqtt.Message) string { return "" }
	}
	return &inbox{key: key, wake: make(chan struct{}, 1)}
}

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

// run passes each message to handle, in order per key, until ctx ends or the queue is closed.
func (q *inbox) run(ctx context.Context, handle func(mqtt.Message)) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return
		}
		batch := q.msgs
		q.msgs = nil
		q.mu.Unlock()
		switch len(batch) {
		case 0:
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			}
		case 1:
			handle(batch[0])
		default:
			q.handleBatch(batch, handle)
		}
	}
}

// handleBatch handles the messages of each key in order, the keys concurrently, and returns when
// all are done. After close, messages not yet started are left unacknowledged, as queued ones are.
func (q *inbox) handleBatch(batch []mqtt.Message, handle func(mqtt.Message)) {
	var (
		order []string
		byKey = map[string][]mqtt.Message{}
	)
	for _, m := range batch {
		k := q.key(m)
		if _, seen := byKey[k]; !seen {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], m)
	}
	var wg sync.WaitGroup
	for _, k := range order {
		wg.Add(1)
		go func(msgs []mqtt.Message) {
			defer wg.Done()
			for _, m := range msgs {
				q.mu.Lock()
				closed := q.closed
				q.mu.Unlock()
				if closed {
					return
				}
				handle(m)
			}
		}(byKey[k])
	}
	wg.Wait()
}
