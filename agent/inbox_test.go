package agent

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// testMsg is an mqtt.Message for unit tests of the inbox; the agent's integration tests use real
// ones from mosquitto.
type testMsg struct{ topic string }

func (testMsg) Duplicate() bool            { return false }
func (testMsg) Qos() byte                  { return 1 }
func (testMsg) Retained() bool             { return false }
func (m testMsg) Topic() string            { return m.topic }
func (testMsg) MessageID() uint16          { return 0 }
func (m testMsg) Payload() []byte          { return []byte(m.topic) }
func (testMsg) Ack()                       {}
func keyBeforeSlash(m mqtt.Message) string { k, _, _ := strings.Cut(m.Topic(), "/"); return k }

func TestInbox_KeepsOrderPerKeyAndRunsKeysConcurrently(t *testing.T) {
	q := newInbox(keyBeforeSlash)
	for _, topic := range []string{"a/1", "b/1", "a/2", "b/2", "a/3", "c/1"} {
		q.add(testMsg{topic})
	}
	var (
		mu   sync.Mutex
		got  = map[string][]string{}
		bIn  = make(chan struct{})
		once sync.Once
	)
	handled := make(chan struct{}, 6)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.run(ctx, func(m mqtt.Message) {
		k := keyBeforeSlash(m)
		if k == "b" {
			once.Do(func() { close(bIn) })
		}
		if m.Topic() == "a/1" {
			// a's first message waits for b's: only possible if keys run concurrently.
			select {
			case <-bIn:
			case <-time.After(10 * time.Second):
				t.Error("b was not handled while a's first message was in hand")
			}
		}
		mu.Lock()
		got[k] = append(got[k], m.Topic())
		mu.Unlock()
		handled <- struct{}{}
	})
	for range 6 {
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatalf("not all messages handled: %v", got)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]string{"a": "a/1 a/2 a/3", "b": "b/1 b/2", "c": "c/1"}
	for k, w := range want {
		if g := strings.Join(got[k], " "); g != w {
			t.Errorf("key %s handled %q, want %q in this order", k, g, w)
		}
	}
}

func TestInbox_CloseLeavesUnstartedMessagesUnhandled(t *testing.T) {
	q := newInbox(keyBeforeSlash)
	q.add(testMsg{"a/1"})
	q.add(testMsg{"a/2"})
	var n int
	done := make(chan struct{})
	go func() {
		defer close(done)
		q.run(context.Background(), func(m mqtt.Message) {
			n++
			if m.Topic() == "a/1" {
				q.close() // the connection ends while a/1 is in hand
			}
		})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after close")
	}
	if n != 1 {
		t.Errorf("%d messages handled, want 1: a/2 was not started before close", n)
	}
}
