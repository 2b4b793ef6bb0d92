package cmx

import (
	"bytes"
	"testing"
)

// The server side of the exchange (cmxctl, tests) parses what an agent sends: these parsers read
// network input too.

func FuzzParseConfirmation(f *testing.F) {
	f.Add([]byte(`{"id":42,"status":"ok"}`))
	f.Add([]byte(`{"id":"cfg-7","status":"superseded by 8"}`))
	f.Add([]byte(`{"status":"invalid payload: not JSON"}`))
	f.Add([]byte(`{"id":[1],"status":"ok"}`))
	f.Add([]byte(`{"id":1e400,"status":""}`))
	f.Add([]byte(`{"id":"\u00e9\ud800","status":null}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		id, status, err := ParseConfirmation(payload)
		if err != nil {
			return
		}
		// What parses must survive the round trip through Confirmation with the same id and status.
		id2, status2, err := ParseConfirmation(Confirmation(id, status))
		if err != nil || id2 != id || status2 != status {
			t.Fatalf("round trip of %q: (%q, %q, %v), want (%q, %q)", payload, id2.Key(), status2, err, id.Key(), status)
		}
	})
}

func FuzzParsePullRequest(f *testing.F) {
	f.Add([]byte(`{"id":1}`))
	f.Add([]byte(`{"id":18446744073709551615}`))
	f.Add([]byte(`{"id":0}`))
	f.Add([]byte(`{"id":-1}`))
	f.Add([]byte(`{"id":"1"}`))
	f.Add([]byte(`{"id":1.5}`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		id, err := ParsePullRequest(payload)
		if err != nil {
			return
		}
		if id == 0 {
			t.Fatalf("ParsePullRequest(%q) accepted id 0", payload)
		}
		if back, err := ParsePullRequest(PullRequest(id)); err != nil || back != id {
			t.Fatalf("round trip of %d: %d, %v", id, back, err)
		}
		if !bytes.Contains(PullRequest(id), []byte("id")) {
			t.Fatal("pull request without id")
		}
	})
}
