package fieldtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
)

// cloud is the server side of the suites: a recording client on the cloud broker that pushes,
// answers every pull with the newest configuration of its endpoint, and collects confirmations.
// It subscribes at QoS 2, so a message arrives with the QoS it was published with.
type cloud struct {
	t      *testing.T // the test or subtest using it now (see in)
	top    *testing.T // the test it was made for: its answers to pulls report there
	client *mqtttest.Client
	app    string
	// Confirmations: P/json/status (pushes without a request id) and P/json/+/status.
	plain, withReq *mqtttest.Sub
	pulls          *mqtttest.Sub

	mu      sync.Mutex
	nextID  int
	latest  map[string]sent   // newest configuration per token: what a pull is answered with
	pushes  map[string][]sent // every push per token, in order
	answers int               // pulls answered
	silent  bool              // pulls are not answered
	retries int               // publishes that failed and were repeated
}

// sent is one configuration the cloud sent: id N, entries [N].
type sent struct {
	id int
}

func (s sent) body() string { return fmt.Sprintf("[%d]", s.id) }

func (s sent) payload() string { return fmt.Sprintf(`{"id":%d,"entries":%s}`, s.id, s.body()) }

func newCloud(t *testing.T, client *mqtttest.Client, app string) *cloud {
	t.Helper()
	p := "kp1/" + app + "/cmx/+/"
	c := &cloud{
		t: t, top: t, client: client, app: app,
		plain:   client.Subscribe(t, p+"json/status", 2),
		withReq: client.Subscribe(t, p+"json/+/status", 2),
		pulls:   client.Subscribe(t, p+"pull/json", 2),
		latest:  map[string]sent{},
		pushes:  map[string][]sent{},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.pulls.Follow(ctx, c.answer) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// in makes subtest t the one the cloud's checks fail, until the returned function restores the
// test before: FailNow must come from the goroutine of the test that fails.
//
//	defer srv.in(t)()
func (c *cloud) in(t *testing.T) (restore func()) {
	prev := c.t
	c.t = t
	return func() { c.t = prev }
}

func (c *cloud) prefix(token string) string { return "kp1/" + c.app + "/cmx/" + token }

// assign makes a configuration the newest for token without pushing it: the agent gets it by
// asking (boot pull).
func (c *cloud) assign(token string) sent { return c.next(token) }

func (c *cloud) next(token string) sent {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	s := sent{id: c.nextID}
	c.latest[token] = s
	c.pushes[token] = append(c.pushes[token], s)
	return s
}

// push sends the next configuration to token at P/json.
func (c *cloud) push(token string, qos byte) sent {
	c.t.Helper()
	s := c.next(token)
	c.publish(c.prefix(token)+"/json", qos, s.payload())
	return s
}

// pushParallel pushes the next configuration to each token from several goroutines at once.
func (c *cloud) pushParallel(tokens []string, workers int) {
	c.t.Helper()
	work := make(chan string)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for token := range work {
				s := c.next(token)
				if err := c.tryPublish(c.prefix(token)+"/json", 1, s.payload()); err != nil {
					c.t.Error(err)
				}
			}
		}()
	}
	for _, tok := range tokens {
		work <- tok
	}
	close(work)
	wg.Wait()
}

// answer answers a pull (P/pull/json, {"id": N}) at P/json/N with the newest configuration.
func (c *cloud) answer(m mqtttest.Message) {
	token, ok := tokenOf(m.Topic)
	var req struct {
		ID uint64 `json:"id"`
	}
	if !ok || json.Unmarshal(m.Payload, &req) != nil || req.ID == 0 {
		c.top.Errorf("malformed pull: %v", m)
		return
	}
	c.mu.Lock()
	s, found := c.latest[token]
	silent := c.silent
	c.mu.Unlock()
	if !found || silent {
		return
	}
	if err := c.tryPublish(fmt.Sprintf("%s/json/%d", c.prefix(token), req.ID), 1,
		s.payload()); err != nil {
		c.top.Errorf("answer pull %v: %v", m, err)
		return
	}
	c.mu.Lock()
	c.answers++
	c.mu.Unlock()
}

// publish publishes and retries until the broker has it: a clustered broker may refuse a publish
// or drop the connection while a queue elects a new leader. A repeat is harmless, the agent knows
// the id.
func (c *cloud) publish(topic string, qos byte, payload string) {
	c.t.Helper()
	if err := c.tryPublish(topic, qos, payload); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cloud) tryPublish(topic string, qos byte, payload string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := c.client.TryPublish(topic, qos, []byte(payload))
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("publish for 60s: %w", err)
		}
		c.mu.Lock()
		c.retries++
		c.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
}

// confirmation is one {"id", "status"} the agent sent.
type confirmation struct {
	topic  string
	qos    byte
	id     json.RawMessage // as sent (empty when none): its JSON type is part of the contract
	status string
}

func (c *cloud) confirmations() []confirmation {
	var out []confirmation
	for _, m := range append(c.plain.All(), c.withReq.All()...) {
		out = append(out, parseConfirmation(c.t, m))
	}
	return out
}

// statuses returns, per token and numeric id, every status confirmed.
func (c *cloud) statuses() map[string]map[int][]string {
	got := map[string]map[int][]string{}
	for _, cf := range c.confirmations() {
		token, _ := tokenOf(cf.topic)
		id, err := strconv.Atoi(string(cf.id))
		if err != nil {
			continue
		}
		if got[token] == nil {
			got[token] = map[int][]string{}
		}
		got[token][id] = append(got[token][id], cf.status)
	}
	return got
}

// losses lists the pushes that have no good confirmation: "ok", or "superseded by" a newer id of
// the same endpoint; the newest of each endpoint must be "ok".
func (c *cloud) losses() []string {
	got := c.statuses()
	c.mu.Lock()
	defer c.mu.Unlock()
	var lost []string
	for token, list := range c.pushes {
		newest := c.latest[token].id
		for _, s := range list {
			if !goodStatus(got[token][s.id], s.id, newest) {
				lost = append(lost, fmt.Sprintf("%s/%d:%q", token, s.id, got[token][s.id]))
			}
		}
	}
	return lost
}

func goodStatus(statuses []string, id, newest int) bool {
	for _, st := range statuses {
		if st == "ok" {
			return true
		}
		if n, ok := strings.CutPrefix(st, "superseded by "); ok && id != newest {
			if by, err := strconv.Atoi(n); err == nil && by > id {
				return true
			}
		}
	}
	return false
}

// settle waits until every push of every endpoint is confirmed and each output holds its newest
// configuration.
func (c *cloud) settle(g *gateway, within time.Duration) {
	c.t.Helper()
	eventually(c.t, within, func() (bool, string) {
		lost := c.losses()
		c.mu.Lock()
		defer c.mu.Unlock()
		var wrong []string
		for token, s := range c.latest {
			body, err := os.ReadFile(g.output(token))
			if err != nil || string(body) != s.body() {
				wrong = append(wrong, fmt.Sprintf("%s=%q (%v) want %s", token, body, err, s.body()))
			}
		}
		return len(lost) == 0 && len(wrong) == 0, fmt.Sprintf("%d pushes without a good confirmation: %s; %d outputs wrong: %s",
			len(lost), strings.Join(lost[:min(20, len(lost))], " "), len(wrong), strings.Join(wrong[:min(5, len(wrong))], " "))
	})
	for _, cf := range c.confirmations() {
		if cf.status != "ok" && !strings.HasPrefix(cf.status, "superseded by ") {
			c.t.Errorf("confirmation %+v: want ok or superseded by a newer id", cf)
		}
	}
}

// pullsSeen counts the agent's pulls for token so far.
func (c *cloud) pullsSeen(token string) int {
	n := 0
	for _, m := range c.pulls.All() {
		if tk, _ := tokenOf(m.Topic); tk == token {
			n++
		}
	}
	return n
}

// waitPulls waits until token has pulled n times: the agent pulls right after every connect, once
// its subscriptions are acknowledged.
func (c *cloud) waitPulls(token string, n int, within time.Duration) {
	c.t.Helper()
	eventually(c.t, within, func() (bool, string) {
		got := c.pullsSeen(token)
		return got >= n, fmt.Sprintf("%d pulls of %s, want %d", got, token, n)
	})
}

// tokenOf reads the token of kp1/<app>/<extension>/<token>/...
func tokenOf(topic string) (string, bool) {
	parts := strings.Split(topic, "/")
	if len(parts) < 5 || parts[0] != "kp1" {
		return "", false
	}
	return parts[3], true
}
