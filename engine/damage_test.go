package engine

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/store"
)

// damageState stops the engine, overwrites endpoint key's state record with bytes that do not
// decode (bbolt's pages check out at open; the record inside one does not), and runs it again.
func (c *core) damageState(key string) {
	c.t.Helper()
	c.stop()
	st, err := store.OpenStore(filepath.Join(c.dir, "state"), time.Second, 1000)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := st.Update(func(tx *store.Tx) error { return tx.PutRaw(key, store.RecordState, 0, []byte(`{"applied_id":`)) }); err != nil {
		c.t.Fatal(err)
	}
	st.Close()
	c.run()
}

// storedState reads endpoint key's state record as the store holds it.
func (c *core) storedState(key string) (store.EndpointState, error) {
	var st store.EndpointState
	err := c.e.store.View(func(tx *store.Tx) error {
		var err error
		st, err = tx.State(key)
		return err
	})
	return st, err
}

func TestState_ADamagedStateRecordIsReportedAndTheOtherEndpointsRead(t *testing.T) {
	t.Parallel()
	c := startCore(t, config.DialectCMX3, nil, config.Endpoint{Token: "gw"}, config.Endpoint{Token: "gw2"})
	waitReceipt(t, c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`))
	c.next("/status")
	waitReceipt(t, c.deliver(p+"2/json", 1, `{"id": 7, "entries": [7]}`))
	c.next("/status")
	c.damageState("gw")

	eps, err := c.e.Endpoints()
	if err != nil || len(eps) != 2 {
		t.Fatalf("Endpoints = %+v, %v; want both endpoints", eps, err)
	}
	gw, gw2 := eps[0], eps[1]
	if !strings.Contains(gw.Damaged, "decode") {
		t.Errorf("gw damaged %q, want the decode error", gw.Damaged)
	}
	// What is in place is still known from the applied bytes stored beside the record.
	if !gw.Applied || gw.AppliedHash != store.Hash([]byte("[1]")) || gw.AppliedID != "" {
		t.Errorf("gw %+v, want applied with the hash of [1] and no id (the record held it)", gw)
	}
	if gw2.Damaged != "" || gw2.AppliedID != "7" || !gw2.Applied {
		t.Errorf("gw2 %+v, want 7 applied and not damaged", gw2)
	}

	st, err := c.e.Stats()
	if err != nil || len(st.Endpoints) != 2 {
		t.Fatalf("Stats = %+v, %v; want both endpoints", st.Endpoints, err)
	}
	if s := st.Endpoints[0]; s.Key != "gw" || !strings.Contains(s.Damaged, "decode") {
		t.Errorf("stats of gw %+v, want it damaged", s)
	}
	if s := st.Endpoints[1]; s.Key != "gw2" || s.Damaged != "" || s.AppliedID != "7" {
		t.Errorf("stats of gw2 %+v, want 7 applied and not damaged", s)
	}
}

// The server's answer to the agent's request, with the configuration in place, rewrites a damaged
// state record: found unchanged (no write, no hook), its result is recorded. In cmx3 its id was
// handled before, and a handled id is otherwise only confirmed again.
func TestState_ADamagedStateRecordIsRewrittenByTheAnswerWithTheConfigurationInPlace(t *testing.T) {
	t.Parallel()
	cases := []struct {
		dialect string
		push    string // where a configuration comes unasked
		answer  string // where the answer to request rid comes, a format with rid
		payload string
		id      string
	}{
		{config.DialectCMX3, p + "/json", p + "/json/%d", `{"id": 1, "entries": [1]}`, "1"},
		{config.DialectCMP7, p + "/config/json/status", p + "/config/json/%d/status", `{"configId": "c1", "config": [1]}`, "c1"},
	}
	for _, tc := range cases {
		t.Run(tc.dialect, func(t *testing.T) {
			dir := t.TempDir()
			ran := filepath.Join(dir, "ran")
			hook := script(t, dir, "hook", "echo x >> "+ran+"\n")
			c := startCoreWith(t, coreOptions{Dialect: tc.dialect}, config.Endpoint{Token: "gw", Hook: []string{hook}})
			out := c.output("gw")
			waitReceipt(t, c.deliver(tc.push, 1, tc.payload))
			c.waitFile(out, "[1]")
			c.waitLog("configuration applied", 1)
			c.damageState("gw")
			if _, err := c.storedState("gw"); err == nil {
				t.Fatal("the record reads; the test did not damage it")
			}

			c.nextRequest("gw")           // the first run's, at its start
			_, rid := c.nextRequest("gw") // this run's: the request the answer is for
			waitReceipt(t, c.deliver(fmt.Sprintf(tc.answer, rid), 1, tc.payload))
			var (
				st  store.EndpointState
				err error
			)
			testkit.Eventually(t, testWait, func() bool {
				st, err = c.storedState("gw")
				return err == nil
			}, "the state record still does not read after the server's answer: %v", func() string { return fmt.Sprint(err) })
			if st.AppliedText != tc.id || st.AppliedHash != store.Hash([]byte("[1]")) || st.AppliedShape == "" {
				t.Errorf("state %+v, want %s applied with its hash and shape", st, tc.id)
			}
			if n := len(readLines(t, ran)); n != 1 {
				t.Errorf("hook ran %d times, want once (the configuration in place is unchanged)", n)
			}
			eps, err := c.e.Endpoints()
			if err != nil || len(eps) != 1 || eps[0].Damaged != "" || eps[0].AppliedID != tc.id {
				t.Errorf("Endpoints = %+v, %v; want %s applied, not damaged", eps, err, tc.id)
			}
		})
	}
}
