package agent

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// DBName is the file name of the state database inside state_dir.
const DBName = "agent.db"

// Bucket and key names. The layout:
//
//	meta/counter                 last message id handed out (uint64, big endian)
//	outbox/<seq>                 OutMsg, in the order it must be sent
//	endpoints/<ep>/state         EndpointState
//	endpoints/<ep>/current       Offer being applied when a newer one arrived
//	endpoints/<ep>/next          Offer waiting (or, while the worker applies it, being applied)
//	endpoints/<ep>/handled/<id>  handledRec: status of a handled id
//	endpoints/<ep>/handledseq/<seq> id, to evict the oldest handled ids
var (
	bucketMeta      = []byte("meta")
	bucketOutbox    = []byte("outbox")
	bucketEndpoints = []byte("endpoints")
	bucketHandled   = []byte("handled")
	bucketHandSeq   = []byte("handledseq")
	keyCounter      = []byte("counter")
	keyState        = []byte("state")
	keyHandledN     = []byte("handled_n")
)

// Slot names an endpoint's pending offers.
type Slot string

const (
	// SlotCurrent holds the offer that was being applied when a newer one arrived.
	SlotCurrent Slot = "current"
	// SlotNext holds the newest offer not yet applied.
	SlotNext Slot = "next"
)

// Offer is a configuration received for an endpoint and not yet applied: everything needed to apply it
// and to answer for it after a crash.
type Offer struct {
	Seq        uint64    `json:"seq"`             // arrival order, unique per database
	ID         string    `json:"id,omitempty"`    // the dedupe key (typed JSON text in cmx3); "" = none
	Text       string    `json:"text,omitempty"`  // the id as people and hooks read it
	Body       []byte    `json:"body,omitempty"`  // the bytes that go into the output; stored apart, see SetSlot
	ReplyTopic string    `json:"reply_topic"`     // where the answer goes
	ReplyQoS   byte      `json:"reply_qos"`       // the QoS the answer is sent with
	Received   time.Time `json:"received"`        // wall clock, for people only
	RequestID  uint64    `json:"rid,omitempty"`   // dialect data: request id the offer answered
	Extra      string    `json:"extra,omitempty"` // dialect data
}

// EndpointState is what the agent knows of an endpoint's applied configuration.
type EndpointState struct {
	AppliedID   string    `json:"applied_id,omitempty"`
	AppliedText string    `json:"applied_text,omitempty"`
	AppliedHash string    `json:"applied_hash,omitempty"` // hex sha256 of the applied body
	AppliedAt   time.Time `json:"applied_at,omitzero"`
	LastText    string    `json:"last_text,omitempty"` // id of the last offer handled, whatever its result
	LastStatus  string    `json:"last_status,omitempty"`
	LastAt      time.Time `json:"last_at,omitzero"`
}

// OutMsg is a message in the outbox: stored before it is sent, deleted once the broker has it.
type OutMsg struct {
	Seq      uint64 `json:"-"`
	Endpoint string `json:"ep"`
	Topic    string `json:"topic"`
	QoS      byte   `json:"qos"`
	Payload  []byte `json:"payload"`
	// Replaces, when set, makes this message replace every unsent one with the same value: only the
	// newest of them is worth sending (cmp7's applied report of an endpoint).
	Replaces string `json:"replaces,omitempty"`
}

type handledRec struct {
	Seq    uint64 `json:"seq"`
	Status string `json:"status"`
}

// Store is the agent's bbolt database.
type Store struct {
	db         *bolt.DB
	handledMax int
	recovered  *Recovery

	// Group commit for Batch: while one group commits, later callers queue in pending and the
	// next group takes them all in one transaction (one pair of fsyncs).
	gmu     sync.Mutex
	pending []*batchCall
	leading bool // a goroutine is committing a group
}

type batchCall struct {
	fn  func(*Tx) error
	err chan error
}

// maxGroup bounds the functions committed in one transaction, so that one commit's dirty pages
// (and its fsync) stay small.
const maxGroup = 128

// OpenStore opens (or creates) dir/agent.db. The folder is made 0700 and the file 0600 whatever the
// umask. A database locked by another process is an error after lockTimeout, never a hang.
//
// A database that cannot be read (corrupt, truncated, not a bbolt file) is moved aside to
// agent.db.corrupt-<time> and a fresh one is created, so that a damaged file never turns into a
// crash loop; Recovered tells the caller, who logs it and asks the server for the latest
// configuration as after every connect.
func OpenStore(dir string, lockTimeout time.Duration, handledMax int) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state folder: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	path := filepath.Join(dir, DBName)
	db, err := openChecked(path, lockTimeout)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: locked by another process (is another cmx-agent running with this state_dir?)", path)
	}
	var rec *Recovery
	if errors.Is(err, errUnreadable) {
		if rec, err = moveAside(path, err); err != nil {
			return nil, err
		}
		db, err = openChecked(path, lockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, fmt.Errorf("state database: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketOutbox, bucketEndpoints} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	if rec != nil {
		if err := seedCounter(db); err != nil {
			db.Close()
			return nil, fmt.Errorf("init %s: %w", path, err)
		}
	}
	if handledMax <= 0 {
		handledMax = 1000
	}
	return &Store{db: db, handledMax: handledMax, recovered: rec}, nil
}

// Recovered reports the unreadable database OpenStore moved aside, nil when there was none.
func (s *Store) Recovered() *Recovery { return s.recovered }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Path is the database file.
func (s *Store) Path() string { return s.db.Path() }

// Update runs fn in a read-write transaction and commits (fsync) before it returns.
func (s *Store) Update(fn func(*Tx) error) error {
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx, max: s.handledMax}) })
}

// Batch is Update grouped with concurrent callers into one commit: like Update, it returns only
// after the transaction that ran fn has been committed and fsynced. fn may run more than once, so
// it must not have effects outside the transaction.
//
// Unlike bbolt's db.Batch it never waits for company: a caller that finds no commit in progress
// commits at once, and callers arriving during a commit form the next group. A lone push pays no
// delay; a burst pays one commit per group instead of one per message.
func (s *Store) Batch(fn func(*Tx) error) error {
	c := &batchCall{fn: fn, err: make(chan error, 1)}
	s.gmu.Lock()
	s.pending = append(s.pending, c)
	lead := !s.leading
	s.leading = true
	s.gmu.Unlock()
	if lead {
		s.lead()
	}
	return <-c.err
}

// lead commits the pending group, then hands the lead to a new goroutine if more callers queued
// meanwhile, so that the leader's own caller returns after its own commit.
func (s *Store) lead() {
	s.gmu.Lock()
	n := min(len(s.pending), maxGroup)
	group := s.pending[:n:n]
	s.pending = s.pending[n:]
	s.gmu.Unlock()

	s.commitGroup(group)

	s.gmu.Lock()
	more := len(s.pending) > 0
	if !more {
		s.leading = false
		s.pending = nil
	}
	s.gmu.Unlock()
	if more {
		go s.lead()
	}
}

// commitGroup runs the functions of group in one transaction. If one fails, the transaction is
// rolled back, the failing one gets its error from a transaction of its own, and the others are
// committed again without it (as bbolt's Batch does).
func (s *Store) commitGroup(group []*batchCall) {
	failed := -1
	err := s.db.Update(func(tx *bolt.Tx) error {
		t := &Tx{tx: tx, max: s.handledMax}
		for i, c := range group {
			if err := c.fn(t); err != nil {
				failed = i
				return err
			}
		}
		return nil
	})
	if failed < 0 {
		for _, c := range group {
			c.err <- err
		}
		return
	}
	bad := group[failed]
	bad.err <- s.Update(bad.fn)
	rest := append(group[:failed:failed], group[failed+1:]...)
	if len(rest) > 0 {
		s.commitGroup(rest)
	}
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx, max: s.handledMax}) })
}

// Tx is a transaction on the store with typed accessors.
type Tx struct {
	tx  *bolt.Tx
	max int
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// NextIDs reserves n message ids and returns the first; they are never handed out again, across
// restarts included.
func (t *Tx) NextIDs(n int) (uint64, error) {
	b := t.tx.Bucket(bucketMeta)
	var last uint64
	if v := b.Get(keyCounter); len(v) == 8 {
		last = binary.BigEndian.Uint64(v)
	}
	if err := b.Put(keyCounter, u64(last+uint64(n))); err != nil {
		return 0, fmt.Errorf("message id counter: %w", err)
	}
	return last + 1, nil
}

// NextSeq returns a new sequence number for an offer.
func (t *Tx) NextSeq() (uint64, error) {
	return t.tx.Bucket(bucketEndpoints).NextSequence()
}

func (t *Tx) endpoint(ep string, create bool) (*bolt.Bucket, error) {
	root := t.tx.Bucket(bucketEndpoints)
	if !create || !t.tx.Writable() {
		return root.Bucket([]byte(ep)), nil
	}
	b, err := root.CreateBucketIfNotExists([]byte(ep))
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", ep, err)
	}
	return b, nil
}

func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	if b == nil {
		return false, nil
	}
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return b.Put(key, raw)
}

// State returns an endpoint's state; the zero value when nothing was applied.
func (t *Tx) State(ep string) (EndpointState, error) {
	var st EndpointState
	b, err := t.endpoint(ep, false)
	if err != nil {
		return st, err
	}
	_, err = getJSON(b, keyState, &st)
	return st, err
}

// SetState stores an endpoint's state.
func (t *Tx) SetState(ep string, st EndpointState) error {
	b, err := t.endpoint(ep, true)
	if err != nil {
		return err
	}
	return putJSON(b, keyState, st)
}

// Slot returns the offer in an endpoint's slot, nil when empty.
func (t *Tx) Slot(ep string, slot Slot) (*Offer, error) {
	b, err := t.endpoint(ep, false)
	if err != nil {
		return nil, err
	}
	var o Offer
	ok, err := getJSON(b, []byte(slot), &o)
	if !ok || err != nil {
		return nil, err
	}
	if o.Body == nil { // kept apart (see SetSlot); records of earlier versions hold it inline
		if raw := b.Get(bodyKey(slot)); raw != nil {
			o.Body = bytes.Clone(raw) // raw lives in the mmap only while the transaction is open
		}
	}
	return &o, nil
}

// SlotSeq returns the sequence number of the offer in slot without reading its body; ok is false
// when the slot is empty.
func (t *Tx) SlotSeq(ep string, slot Slot) (seq uint64, ok bool, err error) {
	b, err := t.endpoint(ep, false)
	if err != nil {
		return 0, false, err
	}
	var o struct {
		Seq uint64 `json:"seq"`
	}
	ok, err = getJSON(b, []byte(slot), &o)
	return o.Seq, ok, err
}

// bodyKey holds the body of the offer in slot: raw bytes beside the offer's JSON record, so a large
// configuration is neither base64-encoded (a third larger) nor built up in an encoder's buffer.
func bodyKey(slot Slot) []byte { return []byte(string(slot) + ".body") }

// SetSlot stores o in an endpoint's slot; nil empties it.
func (t *Tx) SetSlot(ep string, slot Slot, o *Offer) error {
	b, err := t.endpoint(ep, true)
	if err != nil {
		return err
	}
	if o == nil {
		if err := b.Delete(bodyKey(slot)); err != nil {
			return err
		}
		return b.Delete([]byte(slot))
	}
	meta := *o
	meta.Body = nil
	if err := putJSON(b, []byte(slot), &meta); err != nil {
		return err
	}
	body := o.Body
	if body == nil {
		body = []byte{}
	}
	return b.Put(bodyKey(slot), body)
}

// Handled returns the stored status of an id the endpoint has handled.
func (t *Tx) Handled(ep, id string) (string, bool, error) {
	b, err := t.endpoint(ep, false)
	if err != nil || b == nil {
		return "", false, err
	}
	var rec handledRec
	ok, err := getJSON(b.Bucket(bucketHandled), []byte(id), &rec)
	return rec.Status, ok, err
}

// SetHandled records the status of a handled id. The set is bounded: past the store's limit the
// oldest ids are forgotten.
func (t *Tx) SetHandled(ep, id, status string) error {
	b, err := t.endpoint(ep, true)
	if err != nil {
		return err
	}
	h, err := b.CreateBucketIfNotExists(bucketHandled)
	if err != nil {
		return fmt.Errorf("handled ids: %w", err)
	}
	hs, err := b.CreateBucketIfNotExists(bucketHandSeq)
	if err != nil {
		return fmt.Errorf("handled ids: %w", err)
	}
	n := 0
	if v := b.Get(keyHandledN); len(v) == 8 {
		n = int(binary.BigEndian.Uint64(v))
	}
	var old handledRec
	if ok, err := getJSON(h, []byte(id), &old); err != nil {
		return err
	} else if ok {
		if err := hs.Delete(u64(old.Seq)); err != nil {
			return err
		}
		n--
	}
	seq, err := hs.NextSequence()
	if err != nil {
		return err
	}
	if err := putJSON(h, []byte(id), handledRec{Seq: seq, Status: status}); err != nil {
		return err
	}
	if err := hs.Put(u64(seq), []byte(id)); err != nil {
		return err
	}
	n++
	c := hs.Cursor()
	for k, v := c.First(); k != nil && n > t.max; k, v = c.First() {
		if err := h.Delete(v); err != nil {
			return err
		}
		if err := c.Delete(); err != nil {
			return err
		}
		n--
	}
	return b.Put(keyHandledN, u64(uint64(n)))
}

// Enqueue adds a message to the outbox and returns its sequence number. A message with Replaces set
// first removes the waiting messages with the same Replaces.
func (t *Tx) Enqueue(m OutMsg) (uint64, error) {
	b := t.tx.Bucket(bucketOutbox)
	if m.Replaces != "" {
		if err := t.dropReplaced(b, m.Replaces); err != nil {
			return 0, err
		}
	}
	seq, err := b.NextSequence()
	if err != nil {
		return 0, fmt.Errorf("outbox: %w", err)
	}
	if err := putJSON(b, u64(seq), m); err != nil {
		return 0, fmt.Errorf("outbox: %w", err)
	}
	return seq, nil
}

func (t *Tx) dropReplaced(b *bolt.Bucket, replaces string) error {
	var old [][]byte
	err := b.ForEach(func(k, v []byte) error {
		var m OutMsg
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("outbox entry %x: %w", k, err)
		}
		if m.Replaces == replaces {
			old = append(old, k)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	return nil
}

// DeleteOutbox removes sent messages from the outbox.
func (t *Tx) DeleteOutbox(seqs ...uint64) error {
	b := t.tx.Bucket(bucketOutbox)
	for _, s := range seqs {
		if err := b.Delete(u64(s)); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	return nil
}

// Outbox lists the messages waiting to be sent, oldest first, at most limit (0 = all).
func (t *Tx) Outbox(limit int) ([]OutMsg, error) {
	var out []OutMsg
	c := t.tx.Bucket(bucketOutbox).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		var m OutMsg
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, fmt.Errorf("outbox entry %x: %w", k, err)
		}
		m.Seq = binary.BigEndian.Uint64(k)
		out = append(out, m)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out, nil
}

// PendingByEndpoint counts the outbox messages of each endpoint.
func (t *Tx) PendingByEndpoint() (map[string]int, error) {
	n := map[string]int{}
	err := t.tx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
		var m OutMsg
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("outbox entry %x: %w", k, err)
		}
		n[m.Endpoint]++
		return nil
	})
	return n, err
}
