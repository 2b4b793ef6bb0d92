package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"time"

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
//
// A record that does not decode is left out and described in dropped, as the engine treats an
// unreadable pending offer of the current layout at an endpoint's start: failing the migration
// would fail every start, and the agent would never run again on that database. What is left out is what a damaged
// record would have meant anyway: an offer the broker or the pull at connect brings again, an
// answer, an id whose push would be applied once more.
func migrate(tx *bolt.Tx) (dropped []string, err error) {
	meta, outbox, eps := tx.Bucket(oldMeta), tx.Bucket(oldOutbox), tx.Bucket(oldEndpoints)
	if meta == nil && outbox == nil && eps == nil {
		return nil, nil
	}
	t := &Tx{tx: tx}
	drop := func(format string, args ...any) { dropped = append(dropped, fmt.Sprintf(format, args...)) }
	if err := migrateMeta(t, meta, drop); err != nil {
		return nil, fmt.Errorf("migrate meta: %w", err)
	}
	if err := migrateOutbox(t, outbox, drop); err != nil {
		return nil, fmt.Errorf("migrate outbox: %w", err)
	}
	if err := migrateEndpoints(t, eps, drop); err != nil {
		return nil, err
	}
	for _, name := range [][]byte{oldMeta, oldOutbox, oldEndpoints} {
		if tx.Bucket(name) != nil {
			if err := tx.DeleteBucket(name); err != nil {
				return nil, fmt.Errorf("migrate: delete old bucket %s: %w", name, err)
			}
		}
	}
	return dropped, nil
}

// dropFunc describes a damaged record left out of the migration.
type dropFunc func(format string, args ...any)

// migrateMeta moves the message id counter and the client id (meta may be nil).
func migrateMeta(t *Tx, meta *bolt.Bucket, drop dropFunc) error {
	if meta == nil {
		return nil
	}
	hot := t.hot()
	if v := meta.Get([]byte("counter")); v != nil {
		if len(v) != 8 {
			// Ids must never repeat: start above any the lost counter can have handed out,
			// as after a database moved aside (seedCounter).
			drop("message id counter: %d bytes, not 8; ids go on from the time in µs", len(v))
			v = u64(uint64(max(time.Now().UnixMicro(), 1)))
		}
		if err := hot.Put(keyCounter, bytes.Clone(v)); err != nil {
			return err
		}
	}
	if v := meta.Get([]byte("client_id")); v != nil {
		return hot.Put(keyClientID, bytes.Clone(v))
	}
	return nil
}

// migrateOutbox moves the answers waiting for the broker (outbox may be nil).
func migrateOutbox(t *Tx, outbox *bolt.Bucket, drop dropFunc) error {
	if outbox == nil {
		return nil
	}
	hot := t.hot()
	return outbox.ForEach(func(k, v []byte) error {
		if len(k) != 8 || v == nil {
			return nil
		}
		seq := binary.BigEndian.Uint64(k)
		if err := json.Unmarshal(v, &OutMsg{}); err != nil {
			drop("outbox entry %d: %v", seq, err)
			return nil
		}
		return hot.Put(outboxKey(seq), bytes.Clone(v))
	})
}

// migrateEndpoints moves the offer counter and every endpoint's records (eps may be nil).
func migrateEndpoints(t *Tx, eps *bolt.Bucket, drop dropFunc) error {
	if eps == nil {
		return nil
	}
	if seq := eps.Sequence(); seq > 0 {
		if err := t.hot().Put(keyOfferSeq, u64(seq)); err != nil {
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
		epDrop := func(format string, args ...any) { drop("endpoint %s: "+format, append([]any{ep}, args...)...) }
		if err := migrateEndpoint(t, ep, eps.Bucket([]byte(ep)), epDrop); err != nil {
			return fmt.Errorf("migrate endpoint %s: %w", ep, err)
		}
	}
	return nil
}

// migrateEndpoint moves one endpoint's records; drop describes one left out as damaged.
func migrateEndpoint(t *Tx, ep string, b *bolt.Bucket, drop dropFunc) error {
	if err := migrateRecords(t, ep, b, drop); err != nil {
		return err
	}
	if err := migratePending(t, ep, b, drop); err != nil {
		return err
	}
	return migrateHandled(t, ep, b, drop)
}

// decodedIn reports whether the record at key of b is absent (false, nothing to move) or decodes
// into v; one that does not is dropped.
func decodedIn(b *bolt.Bucket, drop dropFunc, what string, key []byte, v any) bool {
	ok, err := getJSON(b, key, v)
	if err != nil {
		drop("%s: %v", what, err)
	}
	return ok && err == nil
}

// migrateRecords moves an endpoint's state, server state, prior file, applied body and raw
// configuration.
func migrateRecords(t *Tx, ep string, b *bolt.Bucket, drop dropFunc) error {
	hot := t.hot()
	decoded := func(what string, key []byte, v any) bool { return decodedIn(b, drop, what, key, v) }
	var state EndpointState
	haveState := decoded("state", []byte("state"), &state)
	// The records that decode go over as they were written.
	for _, r := range []struct {
		old string
		ok  bool
		dst *bolt.Bucket
		key []byte
	}{
		{"state", haveState, hot, epKey(ep, kindState)},
		{"server", decoded("server", []byte("server"), &ServerState{}), hot, epKey(ep, kindServer)},
		{"prior", decoded("prior", []byte("prior"), &PriorFile{}), t.tx.Bucket(bucketCold), priorKey(ep)},
	} {
		if !r.ok {
			continue
		}
		if err := r.dst.Put(r.key, bytes.Clone(b.Get([]byte(r.old)))); err != nil {
			return err
		}
	}
	if v := b.Get([]byte("body")); v != nil {
		// The state holds the sha256 of the applied bytes: bytes that no longer match it would be
		// put back over the output by a drift repair or a rollback.
		if haveState && state.AppliedHash != "" && Hash(v) != state.AppliedHash {
			drop("body: the applied bytes (%d) do not match the state's hash", len(v))
		} else if err := hot.Put(epKey(ep, kindBody), bytes.Clone(v)); err != nil {
			return err
		}
	}
	// The configuration as received is opaque here, as in the current layout: applied again after
	// a reload, a damaged one is refused like any bad input.
	if v := b.Get([]byte("raw")); v != nil {
		if err := hot.Put(epKey(ep, kindRaw), bytes.Clone(v)); err != nil {
			return err
		}
	}
	return nil
}

// migratePending moves an endpoint's pending offers, the slots of earlier versions included, under
// their own sequence numbers.
func migratePending(t *Tx, ep string, b *bolt.Bucket, drop dropFunc) error {
	read := func(what string, key, bodyKey []byte) error {
		var o Offer
		if !decodedIn(b, drop, "pending offer "+what, key, &o) {
			return nil
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
		if err := read(fmt.Sprintf("p%d", binary.BigEndian.Uint64(k[1:])), k, append([]byte("b"), k[1:]...)); err != nil {
			return err
		}
	}
	for _, slot := range oldSlots {
		if err := read(string(slot), slot, append(append([]byte{}, slot...), ".body"...)); err != nil {
			return err
		}
	}
	return nil
}

// migrateHandled moves an endpoint's handled ids: all into the archive, in their order; the recent
// set starts empty.
func migrateHandled(t *Tx, ep string, b *bolt.Bucket, drop dropFunc) error {
	hot := t.hot()
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
				drop("handled id %q: %v", k, err)
				return nil
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

// MigrationDropped describes the damaged records that migrating a database of the nested layout
// left out at open (one line each, for the log); nil when none.
func (s *Store) MigrationDropped() []string { return s.dropped }
