package transport

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
)

// doneToken is a completed paho token.
type doneToken struct{ err error }

func (t doneToken) Wait() bool                     { return true }
func (t doneToken) WaitTimeout(time.Duration) bool { return true }
func (t doneToken) Done() <-chan struct{}          { c := make(chan struct{}); close(c); return c }
func (t doneToken) Error() error                   { return t.err }

// flakyClient fails the first publish of each topic, as paho does when its outbound queue stays
// full for the write timeout ("publish was broken by timeout"), and records every publish.
type flakyClient struct {
	mqtt.Client
	mu   sync.Mutex
	seen map[string]int
	sent chan string
}

func (c *flakyClient) Publish(topic string, _ byte, _ bool, _ interface{}) mqtt.Token {
	c.mu.Lock()
	c.seen[topic]++
	n := c.seen[topic]
	c.mu.Unlock()
	c.sent <- topic
	if n == 1 {
		return doneToken{err: errors.New("publish was broken by timeout")}
	}
	return doneToken{}
}

func TestSend_APublishThatFailsOnALiveConnectionIsSentAgainWithoutReconnecting(t *testing.T) {
	dir := t.TempDir()
	eng, err := engine.New(&config.Config{
		Kaa:   config.Kaa{AppVersion: "app", Extension: "cmx", Dialect: config.DialectCMX3},
		Agent: config.Agent{StateDir: filepath.Join(dir, "state"), MaxPayload: 1 << 16},
		Endpoints: []config.Endpoint{
			{Token: "a", Output: filepath.Join(dir, "a.json")},
			{Token: "b", Output: filepath.Join(dir, "b.json")},
		},
	}, engine.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	s := New(config.Broker{}, eng, Options{Logger: slog.New(slog.DiscardHandler)})
	fc := &flakyClient{seen: map[string]int{}, sent: make(chan string, 16)}
	c := &conn{s: s, client: fc, gen: 1, lost: make(chan error, 1), stop: make(chan struct{}), ready: make(chan struct{})}
	c.subscribed(1)
	s.mu.Lock()
	s.gen, s.client = 1, fc
	s.mu.Unlock()
	eng.Online(1, true) // queues a request per endpoint on connection 1

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { c.send(ctx); close(done) }()
	counts := map[string]int{}
	deadline := time.After(10 * time.Second)
	for len(counts) < 2 || counts["kp1/app/cmx/a/pull/json"] < 2 || counts["kp1/app/cmx/b/pull/json"] < 2 {
		select {
		case topic := <-fc.sent:
			counts[topic]++
		case <-deadline:
			t.Fatalf("publishes %v: want each request sent again on the same connection after its failure", counts)
		}
	}
	select {
	case err := <-c.lost:
		t.Errorf("the connection was ended (%v): a failed publish must be sent again on it", err)
	default:
	}
	close(c.stop)
	<-done
}
