package engine

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"

	bolt "go.etcd.io/bbolt"
)

// The layout before the one in store.go nested buckets, so that one push rewrote the root page, the
// endpoints bucket's page, the endpoint's bucket page and the leaves and branches of two sub-buckets
// (eleven pages):
//
//	meta/counter, meta/client_id
//	outbox/<seq8>                     OutMsg
//	endpoints (Sequence: the offer counter of still earlier versions)
//	endpoints/<ep>/state, body, raw, prior, server
//	endpoints/<ep>/p<seq8>, b<seq8>   pending offer and its body
//	endpoints/<ep>/current, next      pending offers of earlier versions (body inline or in <slot>.body)
//	endpoints/<ep>/handled/<id>       {"seq", "status", "code"}
//	endpoints/<ep>/handledseq/<seq8>  id (Sequence: the last seq given)
//	endpoints/<ep>/handled_n          number of handled ids
var (
	oldMeta      = []byte("meta")
	oldOutbox    = []byte("outbox")
	oldEndpoints = []byte("endpoints")
	oldHandled   = []byte("handled")
	oldHandSeq   = []byte("handledseq")
)

var oldSlots = [][]byte{[]byte("current"), []byte("next")}

type oldHandledRec struct {
	Seq    uint64 `json:"seq"`
	Status string `json:"status"`
	Code   Code   `json:"code,omitempty"` // 0 in records written before codes were stored
}

// migrate moves a database of the layout before into the current one, in tx (OpenStore's
// transaction, so that a crash leaves either layout whole), and deletes the old buckets. A
// database without them is left as it is.
func migrate(tx *bolt.Tx) error {
	meta, outbox, eps := tx.Bucket(oldMeta), tx.Bucket(oldOutbox), tx.Bucket(oldEndpoints)
	if meta == nil && outbox == nil && eps == nil {
		return nil
	}
	t := &Tx{tx: tx}
	hot := t.hot()
	if meta != nil {
		for _, k := range [][2][]byte{{[]byte("counter"), keyCounter}, {[]byte("client_id"), keyClientID}} {
			if v := meta.Get(k[0]); v != nil {
				if err := hot.Put(k[1], bytes.Clone(v)); err != nil {
					return fmt.Errorf("migrate meta: %w", err)
				}
			}
		}
	}
	if outbox != nil {
		err := outbox.ForEach(func(k, v []byte) error {
			if len(k) != 8 || v == nil {
				return nil
			}
			return hot.Put(outboxKey(binary.BigEndian.Uint64(k)), bytes.Clone(v))
		})
		if err != nil {
			return fmt.Errorf("migrate outbox: %w", err)
		}
	}
	if eps != nil {
		if seq := eps.Sequence(); seq > 0 {
			if err := hot.Put(keyOfferSeq, u64(seq)); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
		}
		var names []string
		err := eps.ForEach(func(k, v []byte) error {
			if v == nil && eps.Bucket(k) != nil {
				names = append(names, string(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, ep := range names {
			if err := migrateEndpoint(t, ep, eps.Bucket([]byte(ep))); err != nil {
				return fmt.Errorf("migrate endpoint %s: %w", ep, err)
			}
		}
	}
	for _, name := range [][]byte{oldMeta, oldOutbox, oldEndpoints} {
		if tx.Bucket(name) != nil {
			if err := tx.DeleteBucket(name); err != nil {
				return fmt.Errorf("migrate: delete old bucket %s: %w", name, err)
			}
		}
	}
	return nil
}

func migrateEndpoint(t *Tx, ep string, b *bolt.Bucket) error {
	hot := t.hot()
	for _, kv := range []struct {
		old  string
		kind byte
	}{{"state", kindState}, {"body", kindBody}, {"raw", kindRaw}, {"server", kindServer}} {
		if v := b.Get([]byte(kv.old)); v != nil {
			if err := hot.Put(epKey(ep, kv.kind), bytes.Clone(v)); err != nil {
				return err
			}
		}
	}
	if v := b.Get([]byte("prior")); v != nil {
		if err := t.tx.Bucket(bucketCold).Put(priorKey(ep), bytes.Clone(v)); err != nil {
			return err
		}
	}

	// Pending offers, the slots of earlier versions included, under their own sequence numbers.
	read := func(key, bodyKey []byte) error {
		var o Offer
		ok, err := getJSON(b, key, &o)
		if !ok || err != nil {
			return err
		}
		if len(o.Routes) == 0 && o.OldTopic != "" {
			o.Routes = []Route{{Topic: o.OldTopic, QoS: o.OldQoS}}
		}
		o.OldTopic, o.OldQoS = "", 0
		if o.Body == nil { // records of the earliest versions hold it inline
			if raw := b.Get(bodyKey); raw != nil {
				o.Body = bytes.Clone(raw)
			}
		}
		return t.SetPending(ep, &o)
	}
	c := b.Cursor()
	for k, _ := c.Seek([]byte("p")); k != nil && k[0] == 'p'; k, _ = c.Next() {
		if len(k) != 9 {
			continue
		}
		if err := read(k, append([]byte("b"), k[1:]...)); err != nil {
			return err
		}
	}
	for _, slot := range oldSlots {
		if err := read(slot, append(append([]byte{}, slot...), ".body"...)); err != nil {
			return err
		}
	}

	// Handled ids: all into the archive, in their order; the recent set starts empty.
	s := handledSet{}
	if hs := b.Bucket(oldHandSeq); hs != nil {
		s.next = hs.Sequence()
	}
	if hb := b.Bucket(oldHandled); hb != nil {
		type rec struct {
			id string
			r  oldHandledRec
		}
		var recs []rec
		err := hb.ForEach(func(k, v []byte) error {
			if v == nil {
				return nil
			}
			var r oldHandledRec
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("handled id %q: %w", k, err)
			}
			recs = append(recs, rec{string(k), r})
			return nil
		})
		if err != nil {
			return err
		}
		sort.Slice(recs, func(i, j int) bool { return recs[i].r.Seq < recs[j].r.Seq })
		prefix := epPrefix(ep)
		ids, seqs := t.tx.Bucket(bucketHandID), t.tx.Bucket(bucketHandSeq)
		for _, r := range recs {
			h := Handled{Status: r.r.Status, Code: r.r.Code}
			if err := ids.Put(archiveIDKey(prefix, r.id), encodeArchived(r.r.Seq, h)); err != nil {
				return err
			}
			if err := seqs.Put(archiveSeqKey(prefix, r.r.Seq), []byte(r.id)); err != nil {
				return err
			}
			s.next = max(s.next, r.r.Seq)
		}
		s.archived = uint64(len(recs))
	}
	if s.archived > 0 || s.next > 0 {
		return hot.Put(epKey(ep, kindHandled), s.encode())
	}
	return nil
}
