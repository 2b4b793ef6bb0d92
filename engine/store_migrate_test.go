package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
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
		b.Put([]byte("state"), js(EndpointState{AppliedID: "7", AppliedText: "7", AppliedHash: "abc", LastStatus: "ok", LastCode: CodeOK}))
		b.Put([]byte("body"), []byte("rendered bytes"))
		b.Put([]byte("raw"), []byte(`{"as":"received"}`))
		b.Put([]byte("prior"), js(priorFile{Exists: true, Body: []byte("operator's file")}))
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

func TestOpenStore_MigratesTheNestedLayout(t *testing.T) {
	dir := t.TempDir()
	oldLayoutDB(t, dir)
	st, err := OpenStore(dir, time.Second, 66)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
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
		check("state", s, EndpointState{AppliedID: "7", AppliedText: "7", AppliedHash: "abc", LastStatus: "ok", LastCode: CodeOK})
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
		check("prior", pr, priorFile{Exists: true, Body: []byte("operator's file")})
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
		last, err := tx.LastSeq()
		if err != nil {
			t.Fatalf("LastSeq: %v", err)
		}
		check("last seq", last, uint64(100))

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
	st.Close()
	st, err = OpenStore(dir, time.Second, 66)
	if err != nil {
		t.Fatal(err)
	}
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

// handledKeys counts an endpoint's ids in the archive.
func handledKeys(t *testing.T, st *Store, ep string) (ids, seqs int) {
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
			st, err := OpenStore(t.TempDir(), time.Second, limit)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
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
	st := openTestStore(t)
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
