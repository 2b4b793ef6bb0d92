package engine

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cmx-agent/cmx-agent/config"
)

// A push whose id was handled before is confirmed again with the status stored for it, and nothing
// runs: no write, no validate, no hook; also after a restart. Ids are typed: the string "9" is
// another id than the number 9.
func TestPush_DuplicateIDIsReconfirmedWithTheStoredStatus(t *testing.T) {
	t.Parallel()
	// cmd.sh logs each run as <what>:<id>; validate refuses candidates holding "evil", the hook
	// outputs holding "bad".
	const cmd = `echo "$1:$CMX_CONFIG_ID" >> "$(dirname "$0")/runs.log"
if [ "$1" = validate ] && grep -q evil "$CMX_CANDIDATE"; then echo "evil" >&2; exit 4; fi
if [ "$1" = hook ] && grep -q bad "$CMX_OUTPUT"; then echo "bad" >&2; exit 7; fi
`
	cases := []struct {
		name    string
		first   string // the entries of push 9
		payload string // a raw payload for push 9 instead (a refused one)
		status  string // push 9's outcome, confirmed again for its duplicates
		file    string // the output after push 9; "" = none
		runs    string
	}{
		{name: "applied", first: `["first"]`, status: "ok", file: `["first"]`, runs: "validate:9 hook:9"},
		{name: "rejected by validate", first: `["evil"]`, status: "rejected by validate: exit 4: evil", runs: "validate:9"},
		{name: "hook failed", first: `["bad"]`, status: "hook failed: exit 7: bad; output removed (there was no previous file)", runs: "validate:9 hook:9"},
		{name: "refused", payload: `{"id":9,"entries":{"a":1}}`, status: "invalid payload: entries must be an array, got object"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sh := script(t, dir, "cmd.sh", cmd)
			runs := filepath.Join(dir, "runs.log")
			c := startCoreWith(t, coreOptions{}, config.Endpoint{Token: "gw",
				Validate: []string{sh, "validate"}, Hook: []string{sh, "hook"}})
			if tc.payload != "" {
				c.send(Message{Topic: p + "/json", QoS: 1, Payload: []byte(tc.payload)})
			} else {
				wantStatus(t, c.push(`9`, tc.first), tc.status)
			}
			check := func(when string) {
				t.Helper()
				// Same id, another body: confirmed with the stored status and not applied.
				got := c.push(`9`, `["second"]`)
				wantStatus(t, got, tc.status)
				if tc.file == "" {
					wantNoFile(t, c.output("gw"))
				} else {
					wantFile(t, c.output("gw"), tc.file)
				}
				if got := strings.Join(readLines(t, runs), " "); got != tc.runs {
					t.Errorf("%s: runs %q, want %q (none for the duplicate)", when, got, tc.runs)
				}
			}
			check("duplicate")
			c.restart()
			check("duplicate after a restart")
			// The string "9" is another id.
			wantStatus(t, c.push(`"9"`, `["third"]`), "ok")
			wantFile(t, c.output("gw"), `["third"]`)
		})
	}
}

// A burst to one endpoint while it writes ends on the newest push; each one that waited is
// answered "superseded by <id>" at its topic and QoS without being applied, and stays so.
func TestPush_BurstToOneEndpointEndsOnTheNewest(t *testing.T) {
	t.Parallel()
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("QoS %d", qos), func(t *testing.T) {
			blocked, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			c := startCoreWith(t, coreOptions{Pause: func(step string) {
				if step == StepSynced {
					once.Do(func() { close(blocked); <-release })
				}
			}}, config.Endpoint{Token: "gw"})
			push := func(id int) *Receipt {
				return c.e.Deliver(Message{Topic: p + "/json", QoS: qos, Payload: []byte(fmt.Sprintf(`{"id":%d,"entries":[%d]}`, id, id))})
			}
			receipts := []*Receipt{push(1)}
			<-blocked // push 1 is being written
			for id := 2; id <= 4; id++ {
				receipts = append(receipts, push(id))
			}
			// 2 and 3 were waiting when a newer push came: superseded without being applied, and
			// answered while 1 is still being written.
			got := map[string]confirmation{}
			for range 2 {
				m := c.confirmed(p + "/json/status")
				got[m.ID] = m
			}
			close(release)
			for range 2 {
				m := c.confirmed(p + "/json/status")
				got[m.ID] = m
			}
			want := map[string]string{"1": "ok", "2": "superseded by 3", "3": "superseded by 4", "4": "ok"}
			for id, w := range want {
				m, ok := got[id]
				if !ok {
					t.Errorf("no confirmation for %s (got %v)", id, got)
					continue
				}
				if m.Status != w || m.QoS != qos {
					t.Errorf("confirmation of %s = %q QoS %d, want %q QoS %d", id, m.Status, m.QoS, w, qos)
				}
			}
			for _, r := range receipts {
				waitReceipt(t, r)
			}
			c.waitFile(c.output("gw"), `[4]`)
			if n := c.waitLog("configuration applied", 2); n != 2 {
				t.Errorf("applied %d times, want 2 (1 and 4)", n)
			}
			// A superseded id sent again is confirmed as it was, not applied.
			m := c.send(Message{Topic: p + "/json", QoS: qos, Payload: []byte(`{"id":2,"entries":[2]}`)})
			if m.Status != "superseded by 3" {
				t.Errorf("2 sent again: %q, want superseded by 3", m.Status)
			}
			wantFile(t, c.output("gw"), `[4]`)
		})
	}
}
