package engine

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/store"
)

// classify names what an arriving configuration is to the endpoint, in one place.
func TestArrival_ClassifyNamesEachCase(t *testing.T) {
	t.Parallel()
	offer := func(id string) *pending { return &pending{o: &store.Offer{ID: id, Text: id}, ack: ackStored} }
	internal := &pending{o: &store.Offer{ID: "7", Text: "7", Internal: true}}
	cases := []struct {
		name          string
		running, next *pending
		handled       map[string]store.Handled // outcomes of ids handled before, not yet committed
		in            inbound
		want          arrivalKind
	}{
		{name: "refused", in: inbound{offer: &store.Offer{ID: "1"}, reject: &Result{Code: store.CodeInvalid}}, want: arrivalRefused},
		{name: "refused although it repeats the running one", running: offer("1"), in: inbound{offer: &store.Offer{ID: "1"}, reject: &Result{Code: store.CodeInvalid}}, want: arrivalRefused},
		{name: "no id is always new", running: offer(""), in: inbound{offer: &store.Offer{}}, want: arrivalNew},
		{name: "repeats the running one", running: offer("1"), in: inbound{offer: &store.Offer{ID: "1"}}, want: arrivalRepeatsRunning},
		{name: "repeats the waiting one", running: offer("1"), next: offer("2"), in: inbound{offer: &store.Offer{ID: "2"}}, want: arrivalRepeatsWaiting},
		{name: "the waiting one has the running one's id (a retried commit)", running: offer("1"), next: offer("1"), in: inbound{offer: &store.Offer{ID: "1"}}, want: arrivalRepeatsWaiting},
		{name: "the agent's own re-apply is no repeat", running: internal, handled: map[string]store.Handled{"7": {Status: "ok", Code: store.CodeOK}}, in: inbound{offer: &store.Offer{ID: "7"}}, want: arrivalHandled},
		{name: "handled before", handled: map[string]store.Handled{"3": {Status: "ok", Code: store.CodeOK}}, in: inbound{offer: &store.Offer{ID: "3"}}, want: arrivalHandled},
		{name: "new", running: offer("1"), in: inbound{offer: &store.Offer{ID: "4"}}, want: arrivalNew},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := &config.Config{
				Kaa:       config.Kaa{AppVersion: "app", Extension: "cmx", Dialect: config.DialectCMX3},
				Agent:     config.Agent{StateDir: filepath.Join(dir, "state"), MaxPayload: 1 << 16},
				Endpoints: []config.Endpoint{{Token: "gw", Output: filepath.Join(dir, "gw.json")}},
			}
			e, err := New(cfg, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			m := &e.eps["gw"].m
			m.running, m.next, m.j.handled = tc.running, tc.next, tc.handled
			if tc.running != nil {
				m.phase = applying
			}
			x, err := m.classify(evArrival{in: tc.in, qos: 1})
			if err != nil {
				t.Fatal(err)
			}
			if x.kind != tc.want {
				t.Errorf("classified %v, want %v", x.kind, tc.want)
			}
		})
	}
}

// pullID returns the id of the next pull request the agent publishes.
func (c *core) pullID() uint64 {
	c.t.Helper()
	m := c.next("/pull/json")
	id, err := cmx.ParsePullRequest(m.Payload)
	if err != nil {
		c.t.Fatal(err)
	}
	return id
}

// An answer never claims what is not true now: a push whose id was applied, sent again after
// another configuration replaced it, is answered "superseded by" the one in place, not "ok"; the
// same configuration answering the agent's own pull is the server's latest word and is applied.
func TestHandled_AnOKNoLongerInPlaceIsAnsweredSupersededUnlessItAnswersAPull(t *testing.T) {
	t.Parallel()
	c := startCore(t, config.DialectCMX3, nil, config.Endpoint{Token: "gw"})
	pull := c.pullID()
	out := c.output("gw")
	wantStatus(t, c.push(`1`, `["one"]`), "ok")
	wantStatus(t, c.push(`2`, `["two"]`), "ok")

	// The server (or a replay) sends 1 again as a plain push: it is not in place.
	wantStatus(t, c.push(`1`, `["one"]`), "superseded by 2")
	wantFile(t, out, `["two"]`)
	// At a request id the agent never used, too.
	if m := c.send(Message{Topic: p + "/json/99999", QoS: 1, Payload: []byte(`{"id":1,"entries":["one"]}`)}); m.Status != "superseded by 2" {
		t.Errorf("1 at a foreign request id: %q, want superseded by 2", m.Status)
	}
	wantFile(t, out, `["two"]`)

	// The answer to the agent's pull names 1: the server says 1 is current, and it is applied.
	answer := fmt.Sprintf("%s/json/%d", p, pull)
	if m := c.send(Message{Topic: answer, QoS: 1, Payload: []byte(`{"id":1,"entries":["one"]}`)}); m.Status != "ok" {
		t.Errorf("1 answering the pull: %q, want ok", m.Status)
	}
	c.waitFile(out, `["one"]`)
	// Now 1 is in place, and 2 is the one no longer true.
	wantStatus(t, c.push(`1`, `["one"]`), "ok")
	c.restart()
	wantStatus(t, c.push(`2`, `["two"]`), "superseded by 1")
	wantFile(t, out, `["one"]`)
}

// A push without an id that replaced an applied one leaves nothing to name: the re-sent id is
// superseded by "a newer push".
func TestHandled_AnOKReplacedByAPushWithoutIDIsSupersededByANewerPush(t *testing.T) {
	t.Parallel()
	c := startCore(t, config.DialectCMX3, nil, config.Endpoint{Token: "gw"})
	wantStatus(t, c.push(`1`, `["one"]`), "ok")
	wantStatus(t, c.push(``, `["anonymous"]`), "ok")
	wantStatus(t, c.push(`1`, `["one"]`), "superseded by a newer push")
	wantFile(t, c.output("gw"), `["anonymous"]`)
}

// In 7/CMP an applied report replaces an older one still unsent, but a configId handled before
// and reported again must not take the place of the report of the configuration applied since.
func TestCMP7_AReconfirmedOldConfigIDDoesNotReplaceANewerUnsentReport(t *testing.T) {
	t.Parallel()
	validate := script(t, t.TempDir(), "validate.sh", `if grep -q bad "$CMX_CANDIDATE"; then echo bad >&2; exit 4; fi`)
	c := startCoreWith(t, coreOptions{Dialect: config.DialectCMP7, Unsent: true}, config.Endpoint{Token: "gw", Validate: []string{validate}})
	waitReceipt(t, c.deliver(p+"/config/json/status", 1, `{"configId": "c1", "config": ["bad"]}`))
	c.waitLog("configuration not applied", 1) // 422
	waitReceipt(t, c.deliver(p+"/config/json/status", 1, `{"configId": "c2", "config": ["good"]}`))
	c.waitLog("configuration applied", 1) // 200, replacing c1's report
	// c1 again: reported again as refused.
	waitReceipt(t, c.deliver(p+"/config/json/status", 1, `{"configId": "c1", "config": ["bad"]}`))
	c.waitLog("duplicate id confirmed again", 1)
	wantFile(t, c.output("gw"), `["good"]`)
	reports := map[string]int{}
	for _, m := range c.e.Outbox().Next(c.gen, 100) {
		if !strings.Contains(m.Topic, "/applied/") {
			continue
		}
		a, err := cmx.ParseAppliedReport(m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		reports[a.ConfigID] = a.StatusCode
	}
	if reports["c2"] != 200 || reports["c1"] != 422 {
		t.Errorf("unsent reports %v, want c2 200 (the configuration in place) and c1 422", reports)
	}
}

// A held acknowledgement lasts at most the hold bound: an apply still running then has its
// configuration stored and its receipt released, so one slow endpoint does not hold every later
// PUBACK. The apply goes on, and its result deletes the record.
func TestHold_AnApplyPastTheBoundIsStoredAndAcknowledged(t *testing.T) {
	t.Parallel()
	blocked, release, pause := holdFirst(StepSynced)
	c := startCoreWith(t, coreOptions{Pause: pause, HoldBound: 50 * time.Millisecond}, config.Endpoint{Token: "gw"})
	unblock := releaseOnCleanup(t, release)
	r := c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)
	<-blocked // 1 is being written, and stays so
	waitReceipt(t, r)
	if left := c.pendingOf("gw"); len(left) != 1 || left[0].ID != "1" {
		t.Fatalf("pending offers %v once acknowledged, want 1 stored", left)
	}
	if n := c.e.eps["gw"].stats.holdsReleased.Load(); n != 1 {
		t.Errorf("holds released %d, want 1", n)
	}
	unblock()
	if m := c.next("/status"); string(m.Payload) != `{"id":1,"status":"ok"}` {
		t.Errorf("confirmation %s, want 1 ok", m.Payload)
	}
	c.waitFile(c.output("gw"), "[1]")
	c.restart()
	if left := c.pendingOf("gw"); len(left) != 0 {
		t.Errorf("pending offers %v after the result, want none", left)
	}
}

// The acknowledgement released at the bound is a stored offer's: a crash after it (the agent
// stopping while the apply is cut short) applies it again at the next start.
func TestHold_AnOfferStoredAtTheBoundIsAppliedAfterARestart(t *testing.T) {
	t.Parallel()
	var f failingCommits
	blocked, release, pause := holdFirst(StepSynced)
	c := startCoreWith(t, coreOptions{Pause: pause, HoldBound: 50 * time.Millisecond, FailCommit: f.fail}, config.Endpoint{Token: "gw"})
	unblock := releaseOnCleanup(t, release)
	r := c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)
	<-blocked
	waitReceipt(t, r)
	// The agent stops and its result cannot be committed: the stored record is all that is left.
	c.crashWithoutResults(&f, unblock)
	if m := c.next("/status"); string(m.Payload) != `{"id":1,"status":"ok"}` {
		t.Errorf("confirmation %s, want 1 ok", m.Payload)
	}
	c.waitFile(c.output("gw"), "[1]")
}

// Process slots are for processes: an endpoint without validate or hook is applied and confirmed
// while every slot runs another endpoint's slow hook.
func TestProcessSlots_AnEndpointWithoutProcessesNeverWaitsForOne(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	gate, started := filepath.Join(dir, "go"), filepath.Join(dir, "started")
	if err := os.Mkdir(started, 0o755); err != nil {
		t.Fatal(err)
	}
	hook := []string{"sh", "-c", `touch "$1/$CMX_TOKEN"; while [ ! -e "$0" ]; do sleep 0.01; done`, gate, started}
	eps := []config.Endpoint{{Token: "quick"}}
	for i := range maxProcesses + 1 {
		eps = append(eps, config.Endpoint{Token: fmt.Sprintf("slow%02d", i), Hook: hook})
	}
	c := startCoreWith(t, coreOptions{}, eps...)
	for i := range maxProcesses + 1 {
		waitReceipt(t, c.deliver(fmt.Sprintf("kp1/app/cmx/slow%02d/json", i), 1, `{"id": 1, "entries": [1]}`))
	}
	// Every slot runs a hook that waits for the gate.
	testkit.Eventually(t, testWait, func() bool {
		names, _ := os.ReadDir(started)
		return len(names) == maxProcesses
	}, "the slow hooks did not start")
	m := c.send(Message{Topic: "kp1/app/cmx/quick/json", QoS: 1, Payload: []byte(`{"id": 1, "entries": ["quick"]}`)})
	if m.Status != "ok" {
		t.Errorf("quick: %q, want ok", m.Status)
	}
	wantFile(t, c.output("quick"), `["quick"]`)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for range maxProcesses + 1 {
		m := c.next("/status")
		var body struct{ Status string }
		if err := json.Unmarshal(m.Payload, &body); err != nil || body.Status != "ok" {
			t.Errorf("%s: %s, want ok", m.Topic, m.Payload)
		}
	}
}

// A removed endpoint's waiting offer leaves the database even when the removal meets a failing
// disk: added again, the endpoint does not apply what the reload dropped.
func TestReload_ARemovedEndpointsWaitingOfferIsDroppedWhileCommitsFail(t *testing.T) {
	t.Parallel()
	gate := filepath.Join(t.TempDir(), "go")
	var f failingCommits
	ep := config.Endpoint{Token: "gw", Hook: []string{"sh", "-c", `while [ ! -e "$0" ]; do sleep 0.01; done`, gate}}
	c := startCoreWith(t, coreOptions{FailCommit: f.fail}, ep)
	ep = c.cfg.Endpoints[0]
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)) // stored, its hook waits
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 2, "entries": [2]}`)) // stored, waits behind 1
	f.n.Store(1 << 30)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.waitLog("cannot record the result; retrying", 1)
	c.e.Reload(nil)
	f.n.Store(0)
	c.e.Reload([]config.Endpoint{ep})
	c.waitLog("configuration applied", 1) // 1, whose result was never committed, is redone
	for _, o := range c.pendingOf("gw") {
		if o.ID == "2" {
			t.Errorf("the dropped offer 2 is still pending")
		}
	}
	c.waitFile(c.output("gw"), "[1]")
	if strings.Contains(c.logs.String(), `id=2 output=`) {
		t.Errorf("the dropped offer 2 was applied:\n%s", c.logs.String())
	}
}

// An endpoint taken out of the configuration while the agent was down leaves no pending offer to
// be applied should it come back: it asks for its latest configuration instead.
func TestRestart_APendingOfferOfAnEndpointNoLongerConfiguredIsDropped(t *testing.T) {
	t.Parallel()
	gate := filepath.Join(t.TempDir(), "go")
	c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw", Hook: []string{"sh", "-c", `while [ ! -e "$0" ]; do sleep 0.01; done`, gate}},
		config.Endpoint{Token: "other"})
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`))
	c.stop()
	if left := c.pendingOf2(t, "gw"); len(left) != 1 {
		t.Fatalf("%d pending offers after the stop, want 1", len(left))
	}
	gw := c.cfg.Endpoints[0]
	c.cfg.Endpoints = c.cfg.Endpoints[1:]
	c.run()
	c.waitLog("dropped the pending configurations of an endpoint no longer configured", 1)
	c.stop()
	c.cfg.Endpoints = append(c.cfg.Endpoints, gw)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.run()
	if left := c.pendingOf("gw"); len(left) != 0 {
		t.Errorf("%d pending offers of the endpoint added back, want none", len(left))
	}
	if strings.Contains(c.logs.String(), `msg="configuration applied"`) {
		t.Errorf("the dropped offer was applied:\n%s", c.logs.String())
	}
}

// pendingOf2 reads the pending offers of key from the database while the engine is stopped.
func (c *core) pendingOf2(t *testing.T, key string) []*store.Offer {
	t.Helper()
	st, err := store.OpenStore(filepath.Join(c.dir, "state"), time.Second, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var out []*store.Offer
	if err := st.View(func(tx *store.Tx) error {
		var err error
		out, err = tx.Pending(key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// A stored offer is never left behind a held one of the same endpoint: the held one is stored with
// it. Otherwise a crash leaves the newer in the database and the older with the broker, whose
// redelivery after the restart would read as the newest and end on disk.
func TestHold_AStoredOfferBehindAHeldOneStoresItToo(t *testing.T) {
	t.Parallel()
	var f failingCommits
	blocked, release, pause := holdFirst(StepSynced)
	c := startCoreWith(t, coreOptions{Pause: pause, HoldBound: time.Hour, FailCommit: f.fail}, config.Endpoint{Token: "gw"})
	unblock := releaseOnCleanup(t, release)
	r5 := c.deliver(p+"/json", 1, `{"id": 5, "entries": [5]}`) // held, being written
	<-blocked
	waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 6, "entries": [6]}`)) // stored, waits behind 5
	waitReceipt(t, r5)                                                   // stored with 6
	var ids []string
	for _, o := range c.pendingOf("gw") {
		ids = append(ids, o.ID)
	}
	if strings.Join(ids, " ") != "5 6" {
		t.Fatalf("pending offers %q, want 5 and 6", ids)
	}
	// A crash: no result is committed. The broker delivers 5 again after the restart.
	c.crashWithoutResults(&f, unblock)
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 5, "entries": [5]}`))
	var got []string
	for range 2 {
		got = append(got, string(c.next("/status").Payload))
	}
	slices.Sort(got)
	if want := []string{`{"id":5,"status":"ok"}`, `{"id":6,"status":"ok"}`}; !slices.Equal(got, want) {
		t.Errorf("confirmations %q, want %q", got, want)
	}
	c.waitLog("configuration applied", 2)
	wantFile(t, c.output("gw"), "[6]")
	if left := c.pendingOf("gw"); len(left) != 0 {
		t.Errorf("pending offers %v after both were applied, want none", left)
	}
}

// Once a message could not be stored, nothing after it on that connection is taken: the transport
// acknowledges neither, and the broker sends both again on the next connection, in their order. A
// newer one applied meanwhile would be followed by the older one, read as newer.
func TestReceiveCommitFailure_NothingLaterOnThatConnectionIsTaken(t *testing.T) {
	t.Parallel()
	var f failingCommits
	c := startCoreWith(t, coreOptions{FailCommit: f.fail}, config.Endpoint{Token: "gw"})
	f.n.Store(1)
	r1 := c.deliver(p+"/json", 0, `{"id": 1, "entries": [1]}`) // its receive commit fails
	r2 := c.deliver(p+"/json", 0, `{"id": 2, "entries": [2]}`)
	for i, r := range []*Receipt{r1, r2} {
		<-r.Done()
		if r.Err() == nil {
			t.Errorf("push %d acknowledged on the connection where 1 could not be stored", i+1)
		}
	}
	wantNoFile(t, c.output("gw"))
	c.reconnect()
	waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 1, "entries": [1]}`))
	waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 2, "entries": [2]}`))
	c.waitLog("configuration applied", 1)
	var got []string
	for range 2 {
		got = append(got, string(c.next("/status").Payload))
	}
	slices.Sort(got)
	if got[1] != `{"id":2,"status":"ok"}` {
		t.Errorf("confirmations %q, want 2 ok", got)
	}
	testkit.Eventually(t, testWait, func() bool { return !c.e.eps["gw"].busy() }, "the endpoint is still busy")
	wantFile(t, c.output("gw"), "[2]")
}

// A repeat that joins an offer already stored (the answer to a pull naming the configuration being
// written, or the broker sending it again) holds its PUBACK no longer than the bound either: PUBACKs
// go in arrival order, so one held for an apply that does not end holds every later one. At the
// bound the offer is stored again with the repeat's route, so a crash still answers it.
func TestHold_ARepeatJoiningAStoredOfferIsReleasedAtTheBound(t *testing.T) {
	t.Parallel()
	for _, repeats := range []string{"the one being written", "the one waiting"} {
		t.Run(repeats, func(t *testing.T) {
			blocked, release, pause := holdFirst(StepSynced)
			c := startCoreWith(t, coreOptions{Pause: pause, HoldBound: 50 * time.Millisecond}, config.Endpoint{Token: "gw"})
			unblock := releaseOnCleanup(t, release)
			// QoS 0: stored on arrival, and acknowledged with that commit.
			waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 1, "entries": [1]}`))
			<-blocked // 1 is being written, and stays so
			id := "1"
			if repeats == "the one waiting" {
				id = "2"
				waitReceipt(t, c.deliver(p+"/json", 0, `{"id": 2, "entries": [2]}`)) // stored, waits
			}
			// The same id at the answer of a pull, QoS 1: held, it joins the stored offer.
			r := c.deliver(p+"/json/77", 1, `{"id": `+id+`, "entries": [`+id+`]}`)
			select {
			case <-r.Done():
			case <-time.After(2 * time.Second): // 40 bounds
				t.Fatalf("the repeat of %s is still held while 1 is being written", id)
			}
			if r.Err() != nil {
				t.Fatalf("receipt: %v", r.Err())
			}
			var routes []string
			for _, o := range c.pendingOf("gw") {
				if o.ID == id {
					for _, rt := range o.Routes {
						routes = append(routes, rt.Topic)
					}
				}
			}
			if want := []string{p + "/json/status", p + "/json/77/status"}; !slices.Equal(routes, want) {
				t.Errorf("stored routes of %s: %q, want %q", id, routes, want)
			}
			unblock()
			n := 2
			if id == "2" {
				n = 3 // 1's first
			}
			got := c.confirmations(n)
			for _, topic := range []string{p + "/json/status", p + "/json/77/status"} {
				if want := `{"id":` + id + `,"status":"ok"}`; got[topic] != want {
					t.Errorf("%s: %q, want %q", topic, got[topic], want)
				}
			}
		})
	}
}

// A reload that removes an endpoint waits for its apply in progress; an apply that does not end (a
// stalled file system) must not hold that push's PUBACK, and with it every later one of the
// connection, for all that time: the bound holds for a removed endpoint too.
func TestHold_ARemovedEndpointsApplyPastTheBoundIsAcknowledged(t *testing.T) {
	t.Parallel()
	blocked, release, pause := holdFirst(StepSynced)
	c := startCoreWith(t, coreOptions{Pause: pause, HoldBound: 50 * time.Millisecond}, config.Endpoint{Token: "gw"}, config.Endpoint{Token: "other"})
	unblock := releaseOnCleanup(t, release)
	r := c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`) // held
	<-blocked                                                 // 1 is being written, and stays so
	gw, other := c.e.eps["gw"], c.e.eps["other"].config()
	reloaded := make(chan struct{})
	go func() { c.e.Reload([]config.Endpoint{other}); close(reloaded) }()
	testkit.Eventually(t, testWait, gw.removed, "Reload did not stop the endpoint")
	select {
	case <-r.Done():
	case <-time.After(2 * time.Second): // 40 bounds
		t.Fatal("the PUBACK of 1 is still held while the removed endpoint writes it")
	}
	if r.Err() != nil {
		t.Fatalf("receipt: %v", r.Err())
	}
	unblock()
	select {
	case <-reloaded:
	case <-time.After(testWait):
		t.Fatal("Reload did not return after the apply in progress")
	}
	c.waitFile(c.output("gw"), "[1]")
	if left := c.pendingOf("gw"); len(left) != 0 {
		t.Errorf("pending offers %v of the removed endpoint after its apply, want none", left)
	}
}

// A message that reaches an endpoint just removed by a reload is acknowledged (nobody wants it) and
// does not cost the connection; when the agent stops, it stays unacknowledged for the restart.
func TestReload_AnArrivalAtARemovedEndpointDoesNotFailTheConnection(t *testing.T) {
	t.Parallel()
	c := startCore(t, config.DialectCMX3, nil, config.Endpoint{Token: "gw"})
	ep := c.e.eps["gw"]
	c.e.Reload(nil)
	r := newReceipt(&c.e.conn, c.gen)
	ep.post(evArrival{in: inbound{offer: &store.Offer{ID: "1", Text: "1"}}, topic: p + "/json", qos: 1, receipt: r})
	waitReceipt(t, r)
	if c.e.conn.hasFailed(c.gen) {
		t.Error("the connection was marked failed by an arrival at a removed endpoint")
	}
}

// releaseOnCleanup returns a function that closes release once; the test's cleanup calls it too,
// before the engine's stop (cleanups run last registered first), which would otherwise wait for an
// apply held at a pause point when the test fails while holding it.
func releaseOnCleanup(t *testing.T, release chan struct{}) func() {
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	return unblock
}

// crashWithoutResults stops the engine as a crash would leave it: every commit fails from now on
// (the results in flight are not recorded), the held apply is released, and the engine runs again
// on the same database with commits working.
func (c *core) crashWithoutResults(f *failingCommits, unblock func()) {
	c.t.Helper()
	f.n.Store(1 << 30)
	c.cancel()
	unblock()
	<-c.done
	c.e.Close()
	c.e = nil
	f.n.Store(0)
	c.run()
}
