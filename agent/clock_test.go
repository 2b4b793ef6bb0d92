package agent

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/store"

	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/clock"
)

// jumpingClock is a wall clock that an operator (or NTP after a boot without RTC) moves by hours;
// its timers run in real time.
type jumpingClock struct {
	clock.Real
	offset atomic.Int64
}

func (c *jumpingClock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *jumpingClock) jump(d time.Duration) {
	c.offset.Add(int64(d))
}

// The wall clock is only shown to people: which push wins, what is superseded and what is sent
// again follow arrival order and the database, whatever the clock does between and during pushes.
func TestClockJump_NothingOrdersByWallTime(t *testing.T) {
	h := newHarness(t)
	jumps := &jumpingClock{}
	blocked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	h.pause = func(step string) {
		if step == StepSynced {
			once.Do(func() { close(blocked); <-release })
		}
	}
	h.startWith(Options{Options: engine.Options{Clock: jumps}})
	h.pulled("gw-001")
	topic := h.prefix("gw-001") + "/json"

	h.server.Publish(t, topic, 1, []byte(`{"id":1,"entries":[1]}`))
	<-blocked // push 1 is being written
	for i, jump := range []time.Duration{-5 * time.Hour, 7 * time.Hour, -30 * 24 * time.Hour} {
		jumps.jump(jump)
		h.server.Publish(t, topic, 1, []byte(fmt.Sprintf(`{"id":%d,"entries":[%d]}`, i+2, i+2)))
	}
	// 2 and 3 each waited when a newer push came, whatever their timestamps say.
	want := map[string]string{"2": "superseded by 3", "3": "superseded by 4"}
	for range 2 {
		_, c := h.confirmed(topic + "/status")
		if w := want[string(c["id"])]; w == "" || status(t, c) != w {
			t.Errorf("confirmation %v, want one of %v", c, want)
		}
		delete(want, string(c["id"]))
	}
	jumps.jump(40 * 24 * time.Hour)
	close(release)
	got := map[string]string{}
	for range 2 {
		_, c := h.confirmed(topic + "/status")
		got[string(c["id"])] = status(t, c)
	}
	if got["1"] != "ok" || got["4"] != "ok" {
		t.Errorf("confirmations = %v, want 1 and 4 ok", got)
	}
	h.waitFile(h.output("gw-001"), []byte(`[4]`))

	// After a restart with the clock set back by a day, the handled ids and the counter still hold.
	h.stop()
	jumps.jump(-24 * time.Hour)
	first := h.agentIDs()
	h.startWith(Options{Options: engine.Options{Clock: jumps}})
	if id := h.pulled("gw-001"); id <= first {
		t.Errorf("pull id after restart = %d, want > %d", id, first)
	}
	h.server.Publish(t, topic, 1, []byte(`{"id":4,"entries":["again"]}`))
	if _, c := h.confirmed(topic + "/status"); status(t, c) != "ok" || string(c["id"]) != "4" {
		t.Errorf("duplicate after restart: %v", c)
	}
	h.server.Publish(t, topic, 1, []byte(`{"id":5,"entries":[5]}`))
	h.confirmed(topic + "/status")
	h.waitFile(h.output("gw-001"), []byte(`[5]`))
}

// agentIDs returns the last message id handed out, read from the stopped agent's database.
func (h *harness) agentIDs() uint64 {
	h.t.Helper()
	st, err := store.OpenStore(h.cfg.Agent.StateDir, time.Second, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	defer st.Close()
	var next uint64
	if err := st.Update(func(tx *store.Tx) error { next, err = tx.NextIDs(1); return err }); err != nil {
		h.t.Fatal(err)
	}
	return next
}
