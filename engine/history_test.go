package engine

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/store"
)

// historyOf returns endpoint key's history as Engine.History reports it, as "id origin" lines,
// newest first, checking each hash against body.
func (c *core) historyOf(key string, body map[string]string) []string {
	c.t.Helper()
	hs, err := c.e.History(key)
	if err != nil || len(hs) != 1 || hs[0].Key != key || hs[0].Damaged != "" {
		c.t.Fatalf("History(%s) = %+v, %v; want that endpoint's", key, hs, err)
	}
	var out []string
	for _, h := range hs[0].Entries {
		if want := store.Hash([]byte(body[h.ID])); h.SHA256 != want {
			c.t.Errorf("entry %s: sha256 %s, want %s (of %s)", h.ID, h.SHA256, want, body[h.ID])
		}
		if h.At.IsZero() {
			c.t.Errorf("entry %s has no time", h.ID)
		}
		out = append(out, h.ID+" "+h.Origin.String())
	}
	return out
}

// The history lists each configuration applied, newest first, with how it came: a push, or the
// answer to one of the agent's own requests ("pull"). What was not applied (a refusal, a
// duplicate) adds nothing, nor does the same configuration applied again while in place; the same
// bytes under a new id do. It is kept across restarts.
func TestHistory_ListsAppliedConfigurationsNewestFirstWithHowTheyCame(t *testing.T) {
	t.Parallel()
	c := startCore(t, config.DialectCMX3, nil, config.Endpoint{Token: "gw"})
	pull := c.pullID()
	body := map[string]string{"1": `["one"]`, "2": `["two"]`, "4": `["two"]`}
	wantStatus(t, c.push(`1`, body["1"]), "ok")
	if m := c.send(Message{Topic: fmt.Sprintf("%s/json/%d", p, pull), QoS: 1, Payload: []byte(`{"id":2,"entries":["two"]}`)}); m.Status != "ok" {
		t.Fatalf("2 answering the pull: %q", m.Status)
	}
	c.send(Message{Topic: p + "/json", QoS: 1, Payload: []byte(`{"id":3,"entries":{}}`)}) // refused
	wantStatus(t, c.push(`1`, body["1"]), "superseded by 2")                              // duplicate
	// The pull's answer again, with 2 in place: unchanged, not a new entry.
	c.send(Message{Topic: fmt.Sprintf("%s/json/%d", p, pull), QoS: 1, Payload: []byte(`{"id":2,"entries":["two"]}`)})
	wantStatus(t, c.push(`4`, body["4"]), "ok") // the same bytes, a new id
	want := []string{"4 push", "2 pull", "1 push"}
	if got := c.historyOf("gw", body); !slices.Equal(got, want) {
		t.Errorf("history %q, want %q", got, want)
	}
	// New options apply the stored configuration again: not a configuration coming in.
	moved := filepath.Join(c.dir, "elsewhere", "gw.json")
	c.e.Reload([]config.Endpoint{{Token: "gw", Output: moved}})
	c.waitFile(moved, body["4"])
	c.waitLog("configuration applied", 3) // 1, 2 and the re-apply (4 was unchanged)
	if got := c.historyOf("gw", body); !slices.Equal(got, want) {
		t.Errorf("history after a re-apply under new options %q, want %q", got, want)
	}
	c.restart()
	if got := c.historyOf("gw", body); !slices.Equal(got, want) {
		t.Errorf("history after a restart %q, want %q", got, want)
	}
}

// In 7/CMP a configuration at the request's /status topic answers the agent's request; one at
// the bare /status topic is the server's push.
func TestHistory_CMP7AnswersToRequestsArePulls(t *testing.T) {
	t.Parallel()
	c := startCore(t, config.DialectCMP7, nil, config.Endpoint{Token: "gw"})
	_, rid := c.nextRequest("gw")
	waitReceipt(t, c.deliver(fmt.Sprintf("%s/config/json/%d/status", p, rid), 1, `{"configId":"a","config":["a"]}`))
	c.waitFile(c.output("gw"), `["a"]`)
	waitReceipt(t, c.deliver(p+"/config/json/status", 1, `{"configId":"b","config":["b"]}`))
	c.waitFile(c.output("gw"), `["b"]`)
	c.waitLog("configuration applied", 2)
	want := []string{"b push", "a pull"}
	if got := c.historyOf("gw", map[string]string{"a": `["a"]`, "b": `["b"]`}); !slices.Equal(got, want) {
		t.Errorf("history %q, want %q", got, want)
	}
}

// History with no key lists every endpoint, sorted by key; an unknown key is an error naming it
// (and the first ten endpoints); a damaged record is named on its endpoint, the others read.
func TestHistory_AllEndpointsOrAnUnknownOne(t *testing.T) {
	t.Parallel()
	c := startCore(t, config.DialectCMX3, nil, config.Endpoint{Token: "gw"}, config.Endpoint{Token: "dev"})
	wantStatus(t, c.push(`1`, `["one"]`), "ok")
	hs, err := c.e.History("")
	if err != nil || len(hs) != 2 || hs[0].Key != "dev" || hs[1].Key != "gw" || len(hs[0].Entries) != 0 || len(hs[1].Entries) != 1 {
		t.Errorf("History() = %+v, %v; want dev with nothing, gw with 1", hs, err)
	}
	if _, err := c.e.History("nope"); !errors.Is(err, ErrUnknownEndpoint) || err.Error() != `no endpoint "nope" (endpoints: dev, gw)` {
		t.Errorf("History(nope) error %v, want ErrUnknownEndpoint naming the endpoints", err)
	}

	c.stop()
	st, err := store.OpenStore(filepath.Join(c.dir, "state"), time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Update(func(tx *store.Tx) error { return tx.PutRaw("gw", store.RecordHistory, 0, []byte{1, 0x80}) }); err != nil {
		t.Fatal(err)
	}
	st.Close()
	c.run()
	hs, err = c.e.History("")
	if err != nil || len(hs) != 2 || hs[0].Damaged != "" || hs[1].Damaged != "history record does not decode: history: bad record" {
		t.Errorf("History() with gw's record damaged = %+v, %v; want gw named damaged, dev as ever", hs, err)
	}
	wantStatus(t, c.push(`2`, `["two"]`), "ok")
	c.waitLog("configuration applied", 2)
	if hs, err := c.e.History("gw"); err != nil || hs[0].Damaged != "" || len(hs[0].Entries) != 1 || hs[0].Entries[0].ID != "2" {
		t.Errorf("History(gw) after the next push = %+v, %v; want it started afresh with 2", hs, err)
	}
}

func TestHistory_AnUnknownEndpointsErrorNamesTenEndpointsAtMost(t *testing.T) {
	t.Parallel()
	var eps []config.Endpoint
	for i := range 12 {
		eps = append(eps, config.Endpoint{Token: fmt.Sprintf("d%02d", i)})
	}
	e := newTestEngine(t, config.DialectCMX3, eps...)
	_, err := e.History("nope")
	if want := `no endpoint "nope" (endpoints: d00, d01, d02, d03, d04, d05, d06, d07, d08, d09 and 2 more)`; err == nil || err.Error() != want {
		t.Errorf("History(nope) error %v, want %s", err, want)
	}
}
