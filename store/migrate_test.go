package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// oldLayoutDB writes a database of the nested layout (meta, outbox, endpoints/<ep>/... with the
// sub-buckets handled and handledseq) with raw bolt calls, as the versions before wrote it.
func oldLayoutDB(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, DBName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	js := func(v any) []byte {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket([]byte("meta"))
		meta.Put([]byte("counter"), u64(1234))
		meta.Put([]byte("client_id"), []byte("cmx-agent-abc"))
		out, _ := tx.CreateBucket([]byte("outbox"))
		out.Put(u64(5), js(OutMsg{Endpoint: "gw-001", Topic: "t/5", QoS: 1, Payload: []byte(`{"id":5}`)}))
		out.Put(u64(9), js(OutMsg{Endpoint: "gw-001", Topic: "t/9", QoS: 1, Payload: []byte(`{"id":9}`), Replaces: "r"}))
		eps, _ := tx.CreateBucket([]byte("endpoints"))
		eps.SetSequence(100) // the offer counter of still earlier versions
		b, _ := eps.CreateBucket([]byte("gw-001"))
		b.Put([]byte("state"), js(EndpointState{AppliedID: "7", AppliedText: "7", AppliedHash: Hash([]byte("rendered bytes")), LastStatus: "ok", LastCode: CodeOK}))
		b.Put([]byte("body"), []byte("rendered bytes"))
		b.Put([]byte("raw"), []byte(`{"as":"received"}`))
		b.Put([]byte("prior"), js(PriorFile{Exists: true, Body: []byte("operator's file")}))
		b.Put([]byte("server"), js(ServerState{ErrorCode: 503, ErrorReason: "busy", Errors: 2}))
		// A pending offer of the last layout, and one in each legacy slot: "current" with its body
		// inline and a single reply topic, "next" with its body beside it.
		b.Put(append([]byte("p"), u64(80)...), js(Offer{Seq: 80, ID: "80", Text: "80", Routes: []Route{{Topic: "a", QoS: 1}, {Topic: "b"}}}))
		b.Put(append([]byte("b"), u64(80)...), []byte("body 80"))
		b.Put([]byte("current"), js(Offer{Seq: 70, ID: `"70"`, Text: "70", Body: []byte("body 70"), OldTopic: "old", OldQoS: 1}))
		b.Put([]byte("next"), js(Offer{Seq: 75, ID: "75", Text: "75", RequestID: 3}))
		b.Put([]byte("next.body"), []byte("body 75"))
		hb, _ := b.CreateBucket([]byte("handled"))
		hs, _ := b.CreateBucket([]byte("handledseq"))
		recs := []struct {
			id     string
			status string
			code   Code
		}{{"1", "ok", CodeOK}, {"2", "superseded by 3", 0}, {"3", "hook failed: exit 1", CodeFailed}, {`"4"`, "invalid: x", CodeInvalid}, {"5", "ok", CodeOK}}
		for i, r := range recs {
			seq := uint64(i + 1)
			hb.Put([]byte(r.id), js(map[string]any{"seq": seq, "status": r.status, "code": r.code}))
			hs.Put(u64(seq), []byte(r.id))
		}
		hs.SetSequence(5)
		b.Put([]byte("handled_n"), u64(5))
		b2, _ := eps.CreateBucket([]byte("gw-002/x"))
		return b2.Put([]byte("state"), js(EndpointState{AppliedID: "9"}))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// openOldLayout opens, and so migrates, the database oldLayoutDB writes in dir, with the record at
// key damaged to value unless key is "" (see damageOldLayout).
func openOldLayout(t *testing.T, dir, key, value string) *testStore {
	t.Helper()
	oldLayoutDB(t, dir)
	if key != "" {
		damageOldLayout(t, dir, key, value)
	}
	return mustOpenIn(t, dir, 66)
}

func TestOpenStore_MigratesTheNestedLayout(t *testing.T) {
	dir := t.TempDir()
	st := openOldLayout(t, dir, "", "")
	var err error
	if st.Recovered() != nil {
		t.Fatalf("Recovered() = %+v, want the old database migrated", st.Recovered())
	}
	check := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", what, got, want)
		}
	}
	err = st.View(func(tx *Tx) error {
		for _, name := range []string{"meta", "outbox", "endpoints"} {
			if tx.tx.Bucket([]byte(name)) != nil {
				t.Errorf("old bucket %s still there", name)
			}
		}
		s, err := tx.State("gw-001")
		if err != nil {
			return err
		}
		check("state", s, EndpointState{AppliedID: "7", AppliedText: "7", AppliedHash: Hash([]byte("rendered bytes")), LastStatus: "ok", LastCode: CodeOK})
		s2, _ := tx.State("gw-002/x")
		check("state of the second endpoint", s2.AppliedID, "9")
		body, ok, _ := tx.Body("gw-001")
		check("body", string(body), "rendered bytes")
		check("body ok", ok, true)
		raw, _, _ := tx.Raw("gw-001")
		check("raw", string(raw), `{"as":"received"}`)
		raw2, ok2, _ := tx.Raw("gw-002/x")
		check("raw of an endpoint without", raw2 == nil && !ok2, true)
		pr, ok, _ := tx.Prior("gw-001")
		check("prior", pr, PriorFile{Exists: true, Body: []byte("operator's file")})
		check("prior ok", ok, true)
		ss, _ := tx.ServerState("gw-001")
		check("server state", ss, ServerState{ErrorCode: 503, ErrorReason: "busy", Errors: 2})

		offers, err := tx.Pending("gw-001")
		if err != nil {
			return err
		}
		var got []string
		for _, o := range offers {
			got = append(got, fmt.Sprintf("%d %s %s %v rid=%d", o.Seq, o.ID, o.Body, o.Routes, o.RequestID))
		}
		check("pending", got, []string{
			`70 "70" body 70 [{old 1}] rid=0`,
			`75 75 body 75 [] rid=3`,
			`80 80 body 80 [{a 1} {b 0}] rid=0`,
		})
		has, _ := tx.HasPending("gw-001")
		check("has pending", has, true)
		has2, _ := tx.HasPending("gw-002/x")
		check("has pending (second endpoint)", has2, false)
		check("last seq", tx.LastSeqOf(tx.PendingSeqs()), uint64(100))

		for id, want := range map[string]Handled{
			"1": {"ok", CodeOK}, "2": {"superseded by 3", CodeSuperseded}, "3": {"hook failed: exit 1", CodeFailed},
			`"4"`: {"invalid: x", CodeInvalid}, "5": {"ok", CodeOK},
		} {
			h, ok, err := tx.Handled("gw-001", id)
			if err != nil || !ok || h != want {
				t.Errorf("handled %s = %+v, %v, %v; want %+v", id, h, ok, err, want)
			}
		}
		if _, ok, _ := tx.Handled("gw-001", "4"); ok {
			t.Error(`handled 4 found; only "4" was handled`)
		}

		msgs, err := tx.Outbox(0)
		if err != nil {
			return err
		}
		check("outbox", msgs, []OutMsg{
			{Seq: 5, Endpoint: "gw-001", Topic: "t/5", QoS: 1, Payload: []byte(`{"id":5}`)},
			{Seq: 9, Endpoint: "gw-001", Topic: "t/9", QoS: 1, Payload: []byte(`{"id":9}`), Replaces: "r"},
		})
		check("last outbox seq", tx.LastOutboxSeq(), uint64(9))
		check("client id", tx.ClientID(), "cmx-agent-abc")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var id uint64
	if err := st.Update(func(tx *Tx) error { id, err = tx.NextIDs(1); return err }); err != nil || id != 1235 {
		t.Errorf("next message id = %d, %v; want 1235", id, err)
	}

	// The handled ids kept their order: 64 new ones make the recent set move its older half to the
	// archive, and the limit (66) then evicts the three oldest, which are the migrated 1, 2 and 3.
	err = st.Update(func(tx *Tx) error {
		for i := range 64 {
			if err := tx.SetHandled("gw-001", fmt.Sprintf("n%d", i), Handled{"ok", CodeOK}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st.View(func(tx *Tx) error {
		for _, id := range []string{"1", "2", "3", `"4"`, "5", "n0", "n63"} {
			_, ok, err := tx.Handled("gw-001", id)
			if want := id != "1" && id != "2" && id != "3"; ok != want || err != nil {
				t.Errorf("handled %s after 64 more: %v (%v), want %v", id, ok, err, want)
			}
		}
		return nil
	})

	// The migrated database opens again as it is.
	st.mustClose()
	st.mustReopen()
	st.View(func(tx *Tx) error {
		offers, _ := tx.Pending("gw-001")
		if len(offers) != 3 {
			t.Errorf("%d pending offers after a second open, want 3", len(offers))
		}
		if _, ok, _ := tx.Handled("gw-001", "n63"); !ok {
			t.Error("handled n63 lost after a second open")
		}
		return nil
	})
}

// damageOldLayout overwrites one record of the database oldLayoutDB wrote: key is in
// endpoints/gw-001, or SUB/KEY in its sub-bucket or top-level bucket SUB.
func damageOldLayout(t *testing.T, dir, key, value string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, DBName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("endpoints")).Bucket([]byte("gw-001"))
		if sub, k, ok := strings.Cut(key, "/"); ok {
			key = k
			if b = b.Bucket([]byte(sub)); b == nil {
				b = tx.Bucket([]byte(sub))
			}
		}
		return b.Put([]byte(key), []byte(value))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// migrated is what a test reads back of the database oldLayoutDB writes, once migrated.
type migrated struct {
	State, Server, Prior, Body string // "" when none
	Pending                    []string
	Handled                    []string // the ids 1 to 5 that are found
	Outbox                     []uint64
	NextID                     uint64
}

func readMigrated(t *testing.T, st *testStore) migrated {
	t.Helper()
	var m migrated
	err := st.Update(func(tx *Tx) error {
		s, err := tx.State("gw-001")
		if err != nil {
			return err
		}
		if s != (EndpointState{}) {
			m.State = s.AppliedText
		}
		ss, err := tx.ServerState("gw-001")
		if err != nil {
			return err
		}
		if ss != (ServerState{}) {
			m.Server = ss.ErrorReason
		}
		pr, ok, err := tx.Prior("gw-001")
		if err != nil {
			return err
		}
		if ok {
			m.Prior = string(pr.Body)
		}
		body, ok, err := tx.Body("gw-001")
		if err != nil {
			return err
		}
		if ok {
			m.Body = string(body)
		}
		offers, err := tx.Pending("gw-001")
		if err != nil {
			return err
		}
		for _, o := range offers {
			m.Pending = append(m.Pending, fmt.Sprintf("%d %s", o.Seq, o.Body))
		}
		for _, id := range []string{"1", "2", "3", `"4"`, "5"} {
			_, ok, err := tx.Handled("gw-001", id)
			if err != nil {
				return err
			}
			if ok {
				m.Handled = append(m.Handled, id)
			}
		}
		msgs, err := tx.Outbox(0)
		if err != nil {
			return err
		}
		for _, o := range msgs {
			m.Outbox = append(m.Outbox, o.Seq)
		}
		m.NextID, err = tx.NextIDs(1)
		return err
	})
	if err != nil {
		t.Fatalf("reading the migrated database: %v", err)
	}
	return m
}

func TestOpenStore_DropsADamagedRecordOfTheNestedLayoutAndKeepsTheOthers(t *testing.T) {
	intact := readMigrated(t, openOldLayout(t, t.TempDir(), "", ""))
	const notJSON = "{not json"
	start := uint64(time.Now().UnixMicro())
	for _, tc := range []struct {
		name    string
		key     string // in endpoints/gw-001, or bucket/key
		value   string
		dropped string // what OpenStore reports
		want    func(*migrated)
	}{
		{"the next slot", "next", notJSON, "endpoint gw-001: pending offer next", func(m *migrated) { m.Pending = []string{"70 body 70", "80 body 80"} }},
		{"the current slot", "current", notJSON, "endpoint gw-001: pending offer current", func(m *migrated) { m.Pending = []string{"75 body 75", "80 body 80"} }},
		{"a pending offer", "p" + string(u64(80)), notJSON, "endpoint gw-001: pending offer p", func(m *migrated) { m.Pending = []string{"70 body 70", "75 body 75"} }},
		{"the prior file", "prior", notJSON, "endpoint gw-001: prior", func(m *migrated) { m.Prior = "" }},
		{"the state", "state", notJSON, "endpoint gw-001: state", func(m *migrated) { m.State = "" }},
		{"the server state", "server", `["x"]`, "endpoint gw-001: server", func(m *migrated) { m.Server = "" }},
		{"the applied bytes, which no longer match the state's hash", "body", "rendered bytez", "endpoint gw-001: body", func(m *migrated) { m.Body = "" }},
		{"a handled id", "handled/3", notJSON, `endpoint gw-001: handled id "3"`, func(m *migrated) { m.Handled = []string{"1", "2", `"4"`, "5"} }},
		{"an outbox entry", "outbox/" + string(u64(5)), notJSON, "outbox entry 5", func(m *migrated) { m.Outbox = []uint64{9} }},
		{"the message id counter", "meta/counter", "xx", "message id counter", func(m *migrated) { m.NextID = 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openOldLayout(t, t.TempDir(), tc.key, tc.value)
			got := readMigrated(t, st)
			want := intact
			tc.want(&want)
			if want.NextID == 0 { // a damaged counter starts above any id handed out: the time in µs
				if got.NextID <= start {
					t.Errorf("next message id %d, want above %d", got.NextID, start)
				}
				got.NextID = 0
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("migrated\n %+v\nwant\n %+v", got, want)
			}
			if d := st.MigrationDropped(); len(d) != 1 || !strings.Contains(d[0], tc.dropped) {
				t.Errorf("reported as dropped: %q, want one record naming %q", d, tc.dropped)
			}
		})
	}
}

// handledKeys counts an endpoint's ids in the archive.
func handledKeys(t *testing.T, st *testStore, ep string) (ids, seqs int) {
	t.Helper()
	prefix := epPrefix(ep)
	st.View(func(tx *Tx) error {
		c := tx.tx.Bucket(bucketHandID).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			ids++
		}
		c = tx.tx.Bucket(bucketHandSeq).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if len(k) == len(prefix)+8 {
				seqs++
			}
		}
		return nil
	})
	return ids, seqs
}

func TestHandled_RecentSetArchiveAndLimit(t *testing.T) {
	for _, limit := range []int{3, 100, 1000} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			st := mustOpen(t, limit)
			const n = 1100
			status := func(i int) Handled {
				switch i % 3 {
				case 0:
					return Handled{"ok", CodeOK}
				case 1:
					return Handled{fmt.Sprintf("superseded by %d", i+1), CodeSuperseded}
				}
				return Handled{"write failed: " + string(bytes.Repeat([]byte("x"), i%90)), CodeFailed}
			}
			for from := 0; from < n; from += 10 {
				err := st.Update(func(tx *Tx) error {
					for i := from; i < from+10; i++ {
						// Two endpoints whose keys share a prefix, and the same ids for both.
						if err := tx.SetHandled("gw", fmt.Sprint(i), status(i)); err != nil {
							return err
						}
						if err := tx.SetHandled("gw/a", fmt.Sprint(i), Handled{"ok", CodeOK}); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			st.View(func(tx *Tx) error {
				for i := range n {
					h, ok, err := tx.Handled("gw", fmt.Sprint(i))
					if err != nil {
						t.Fatal(err)
					}
					recent := i >= n-limit
					if recent && (!ok || h != status(i)) {
						t.Fatalf("id %d of the last %d: %+v, %v; want %+v", i, limit, h, ok, status(i))
					}
					if i < n-limit-recentMax && ok {
						t.Fatalf("id %d found, %d ids later and with a limit of %d", i, n-i, limit)
					}
				}
				return nil
			})
			ids, seqs := handledKeys(t, st, "gw")
			if ids != seqs || ids > limit {
				t.Errorf("archive holds %d ids and %d seqs, want equal and at most %d", ids, seqs, limit)
			}
			// An archived id handled again becomes recent, and leaves the archive.
			if limit > recentMax {
				old := fmt.Sprint(n - limit + 1)
				if err := st.Update(func(tx *Tx) error { return tx.SetHandled("gw", old, Handled{"ok again", CodeOK}) }); err != nil {
					t.Fatal(err)
				}
				st.View(func(tx *Tx) error {
					h, ok, _ := tx.Handled("gw", old)
					if !ok || h.Status != "ok again" {
						t.Errorf("re-handled id: %+v, %v", h, ok)
					}
					return nil
				})
				if ids2, seqs2 := handledKeys(t, st, "gw"); ids2 != ids-1 || seqs2 != seqs-1 {
					t.Errorf("archive after re-handling an archived id: %d ids %d seqs, want %d", ids2, seqs2, ids-1)
				}
			}
		})
	}
}

// pushCommit is what the engine commits for a push on the held path (journal and outbox).
func pushCommit(tx *Tx, i int, body []byte) error {
	if err := tx.SetHandled("gw", fmt.Sprint(i), Handled{"ok", CodeOK}); err != nil {
		return err
	}
	st := EndpointState{AppliedID: fmt.Sprint(i), AppliedText: fmt.Sprint(i), AppliedHash: fmt.Sprintf("%064x", i),
		AppliedShape: fmt.Sprintf("%064x", i), AppliedAt: time.Now(), LastText: fmt.Sprint(i), LastStatus: "ok",
		LastCode: CodeOK, LastAt: time.Now()}
	if err := tx.SetState("gw", st); err != nil {
		return err
	}
	if err := tx.SetApplied("gw", body, body, false); err != nil {
		return err
	}
	if err := tx.AddHistory("gw", HistoryEntry{At: time.Now(), ID: fmt.Sprint(i), SHA256: st.AppliedHash}); err != nil {
		return err
	}
	if err := tx.DeletePending("gw", uint64(i)); err != nil {
		return err
	}
	if err := tx.PutOutbox(OutMsg{Seq: uint64(i), Endpoint: "gw", Topic: "kp1/app/cmx/gw/json/status", QoS: 1,
		Payload: fmt.Appendf(nil, `{"id":%d,"status":"ok"}`, i)}); err != nil {
		return err
	}
	return tx.DeleteOutbox(uint64(i - 1))
}

// A push's commit writes the meta page, the root page and one leaf of hot; the archive's pages
// only once every recentMax/2 pushes.
func TestStore_PushCommitWritesFourPages(t *testing.T) {
	st := mustOpen(t, 0)
	body := bytes.Repeat([]byte("x"), 256)
	for i := range 100 { // the handled set fills, the archive gets its pages
		if err := st.Update(func(tx *Tx) error { return pushCommit(tx, i+1, body) }); err != nil {
			t.Fatal(err)
		}
	}
	const n = 320
	hist := map[int64]int{}
	var total int64
	for i := range n {
		s0 := st.db.Stats()
		before := s0.TxStats.GetWrite()
		if err := st.Update(func(tx *Tx) error { return pushCommit(tx, i+200, body) }); err != nil {
			t.Fatal(err)
		}
		s1 := st.db.Stats()
		w := s1.TxStats.GetWrite() - before
		hist[w]++
		total += w
	}
	t.Logf("pages written per commit: %v (%.2f on average)", hist, float64(total)/n)
	if hist[4] < n-n/(recentMax/2) {
		t.Errorf("pages written per commit: %v; want 4 (meta, root, hot leaf, free list) in all but one of %d", hist, recentMax/2)
	}
	if avg := float64(total) / n; avg > 4.5 {
		t.Errorf("%.2f pages written per commit on average, want at most 4.5", avg)
	}
}

func TestHandledSet_SizeIsTheEncodedLength(t *testing.T) {
	s := handledSet{archived: 300, next: 1 << 40}
	for i, code := range []Code{0, CodeOK, -5, 1 << 20} {
		s.ents = append(s.ents, handledEnt{seq: uint64(i) << 30, id: fmt.Sprint(i), h: Handled{Status: string(bytes.Repeat([]byte("s"), i*70)), Code: code}})
		if got, want := s.size(), len(s.encode()); got != want {
			t.Fatalf("size %d, encoded %d", got, want)
		}
		d, err := decodeHandledSet(s.encode())
		if err != nil || !reflect.DeepEqual(d, s) {
			t.Fatalf("decoded %+v, %v; want %+v", d, err, s)
		}
	}
}
