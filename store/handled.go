package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// The handled ids of an endpoint (see store.go for the rest of the layout):
//
//	hot/e<ep>h              the most recent ids, oldest first, in one value (handledSet)
//	handled_id/<ep><id>     an older id: uvarint seq, varint code, status
//	handled_seq/<ep><seq8>  that id, so that the oldest are evicted first
//
// A push rewrites only the recent set, which lives in hot beside the rest of what it changes.
// When the set reaches recentMax ids (or recentBytes), its older half moves to the archive in one
// go, so that the archive's pages are rewritten once per recentMax/2 pushes, not with every push;
// evictions (the store's limit, handledMax) happen during these moves, oldest first. The store so
// remembers at least the last handledMax ids, and at most recentMax-1 more between two moves.
const (
	recentMax   = 64
	recentBytes = 1024
)

// handledSet is the recent set: hot/e<ep>h, encoded as
//
//	version (1), uvarint archived, uvarint next,
//	then per id, oldest first: uvarint seq, uvarint len(id), id, varint code, uvarint len(status), status
type handledSet struct {
	archived uint64 // ids of this endpoint in the archive
	next     uint64 // the last sequence number given to an id
	ents     []handledEnt
}

type handledEnt struct {
	seq uint64
	id  string
	h   Handled
}

const handledSetVersion = 1

var errHandledSet = errors.New("handled ids: bad record")

func decodeHandledSet(raw []byte) (handledSet, error) {
	var s handledSet
	if raw == nil {
		return s, nil
	}
	if len(raw) == 0 || raw[0] != handledSetVersion {
		return s, errHandledSet
	}
	r := raw[1:]
	uv := func() (uint64, bool) {
		v, n := binary.Uvarint(r)
		if n <= 0 {
			return 0, false
		}
		r = r[n:]
		return v, true
	}
	str := func() (string, bool) {
		n, ok := uv()
		if !ok || n > uint64(len(r)) {
			return "", false
		}
		v := string(r[:n])
		r = r[n:]
		return v, true
	}
	var ok bool
	if s.archived, ok = uv(); !ok {
		return s, errHandledSet
	}
	if s.next, ok = uv(); !ok {
		return s, errHandledSet
	}
	for len(r) > 0 {
		var e handledEnt
		if e.seq, ok = uv(); !ok {
			return s, errHandledSet
		}
		if e.id, ok = str(); !ok {
			return s, errHandledSet
		}
		code, n := binary.Varint(r)
		if n <= 0 {
			return s, errHandledSet
		}
		r = r[n:]
		e.h.Code = Code(code)
		if e.h.Status, ok = str(); !ok {
			return s, errHandledSet
		}
		s.ents = append(s.ents, e)
	}
	return s, nil
}

func (s *handledSet) encode() []byte {
	b := make([]byte, 0, s.size())
	b = append(b, handledSetVersion)
	b = binary.AppendUvarint(b, s.archived)
	b = binary.AppendUvarint(b, s.next)
	for _, e := range s.ents {
		b = binary.AppendUvarint(b, e.seq)
		b = binary.AppendUvarint(b, uint64(len(e.id)))
		b = append(b, e.id...)
		b = binary.AppendVarint(b, int64(e.h.Code))
		b = binary.AppendUvarint(b, uint64(len(e.h.Status)))
		b = append(b, e.h.Status...)
	}
	return b
}

// size is the encoded length.
func (s *handledSet) size() int {
	n := 1 + uvarintLen(s.archived) + uvarintLen(s.next)
	for _, e := range s.ents {
		n += uvarintLen(e.seq) + uvarintLen(uint64(len(e.id))) + len(e.id) +
			uvarintLen(uint64(e.h.Code)<<1^uint64(int64(e.h.Code)>>63)) +
			uvarintLen(uint64(len(e.h.Status))) + len(e.h.Status)
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for ; v >= 0x80; v >>= 7 {
		n++
	}
	return n
}

// archive records: the value of handled_id/<ep><id>.
func encodeArchived(seq uint64, h Handled) []byte {
	b := binary.AppendUvarint(nil, seq)
	b = binary.AppendVarint(b, int64(h.Code))
	return append(b, h.Status...)
}

func decodeArchived(v []byte) (seq uint64, h Handled, err error) {
	seq, n := binary.Uvarint(v)
	if n <= 0 {
		return 0, h, errHandledSet
	}
	code, m := binary.Varint(v[n:])
	if m <= 0 {
		return 0, h, errHandledSet
	}
	return seq, Handled{Status: string(v[n+m:]), Code: Code(code)}, nil
}

func archiveIDKey(prefix []byte, id string) []byte {
	return append(append(make([]byte, 0, len(prefix)+len(id)), prefix...), id...)
}

func archiveSeqKey(prefix []byte, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, len(prefix)+8), prefix...), seq)
}

func (t *Tx) handledSet(ep string) (handledSet, error) {
	s, err := decodeHandledSet(t.hot().Get(epKey(ep, kindHandled)))
	if err != nil {
		return s, fmt.Errorf("endpoint %s: %w", ep, err)
	}
	return s, nil
}

// Handled returns the stored outcome of an id the endpoint has handled.
func (t *Tx) Handled(ep, id string) (Handled, bool, error) {
	s, err := t.handledSet(ep)
	if err != nil {
		return Handled{}, false, err
	}
	h, ok := Handled{}, false
	for i := len(s.ents) - 1; i >= 0; i-- {
		if s.ents[i].id == id {
			h, ok = s.ents[i].h, true
			break
		}
	}
	if !ok && s.archived > 0 {
		if v := t.tx.Bucket(bucketHandID).Get(archiveIDKey(epPrefix(ep), id)); v != nil {
			if _, h, err = decodeArchived(v); err != nil {
				return Handled{}, false, fmt.Errorf("endpoint %s: %w", ep, err)
			}
			ok = true
		}
	}
	if ok && h.Code == 0 {
		h.Code = legacyCode(h.Status) // records written before codes were stored
	}
	return h, ok, nil
}

// SetHandled records the status of a handled id. The set is bounded: past the store's limit the
// oldest ids are forgotten.
func (t *Tx) SetHandled(ep, id string, h Handled) error {
	s, err := t.handledSet(ep)
	if err != nil {
		return err
	}
	prefix := epPrefix(ep)
	found := false
	for i, e := range s.ents {
		if e.id == id {
			s.ents = append(s.ents[:i], s.ents[i+1:]...)
			found = true
			break
		}
	}
	if !found && s.archived > 0 {
		// An id handled again (cmp7 retries a 5xx) leaves the archive: it is recent again.
		ids := t.tx.Bucket(bucketHandID)
		key := archiveIDKey(prefix, id)
		if v := ids.Get(key); v != nil {
			seq, _, err := decodeArchived(v)
			if err != nil {
				return fmt.Errorf("endpoint %s: %w", ep, err)
			}
			if err := t.tx.Bucket(bucketHandSeq).Delete(archiveSeqKey(prefix, seq)); err != nil {
				return err
			}
			if err := ids.Delete(key); err != nil {
				return err
			}
			s.archived--
		}
	}
	s.next++
	s.ents = append(s.ents, handledEnt{seq: s.next, id: id, h: h})

	limit := uint64(t.max)
	if t.max <= 0 {
		limit = 1000
	}
	moved := false
	if len(s.ents) >= recentMax || (len(s.ents) > 1 && s.size() > recentBytes) {
		if err := t.archiveHandled(prefix, &s, len(s.ents)/2); err != nil {
			return fmt.Errorf("endpoint %s handled ids: %w", ep, err)
		}
		moved = true
	}
	if moved || uint64(len(s.ents)) > limit {
		if err := t.evictHandled(prefix, &s, limit); err != nil {
			return fmt.Errorf("endpoint %s handled ids: %w", ep, err)
		}
	}
	if uint64(len(s.ents)) > limit { // a limit below recentMax: the recent set is all there is
		s.ents = s.ents[uint64(len(s.ents))-limit:]
	}
	return t.hot().Put(epKey(ep, kindHandled), s.encode())
}

// archiveHandled moves the n oldest recent ids to the archive.
func (t *Tx) archiveHandled(prefix []byte, s *handledSet, n int) error {
	ids, seqs := t.tx.Bucket(bucketHandID), t.tx.Bucket(bucketHandSeq)
	for _, e := range s.ents[:n] {
		if err := ids.Put(archiveIDKey(prefix, e.id), encodeArchived(e.seq, e.h)); err != nil {
			return err
		}
		if err := seqs.Put(archiveSeqKey(prefix, e.seq), []byte(e.id)); err != nil {
			return err
		}
	}
	s.ents = append(s.ents[:0:0], s.ents[n:]...)
	s.archived += uint64(n)
	return nil
}

// evictHandled forgets the oldest archived ids while the endpoint holds more than limit.
func (t *Tx) evictHandled(prefix []byte, s *handledSet, limit uint64) error {
	ids, seqs := t.tx.Bucket(bucketHandID), t.tx.Bucket(bucketHandSeq)
	c := seqs.Cursor()
	for s.archived > 0 && s.archived+uint64(len(s.ents)) > limit {
		k, v := c.Seek(prefix)
		if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+8 {
			s.archived = 0 // the count was off: nothing of this endpoint is left
			break
		}
		if err := ids.Delete(archiveIDKey(prefix, string(v))); err != nil {
			return err
		}
		if err := c.Delete(); err != nil {
			return err
		}
		s.archived--
	}
	return nil
}
