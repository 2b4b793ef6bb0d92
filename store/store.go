// Package store is the agent's state database, state_dir/agent.db (bbolt): the persisted types
// (offers, endpoint state, outbox messages, handled ids, history, what the server said), their key
// layout, the migration of the earlier layout, the recovery of an unreadable file, and group commit.
// A commit is durable (fsynced) when Update or Batch returns. It knows nothing of the engine: every
// operation names the endpoint it is for.
package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// DBName is the file name of the state database inside state_dir.
const DBName = "agent.db"

// The layout. A push's commit rewrites every page on the path from the meta page to each key it
// changes (bbolt is copy-on-write per page), so everything a push changes lives in one top-level
// bucket of flat keys, "hot": for a gateway with one endpoint the commit writes the meta page, the
// root page (which holds the buckets' headers) and one leaf of hot. What changes rarely lives in
// buckets of its own, which a push only reads.
//
// <ep> below is the endpoint key prefixed by its length (uvarint), so that no endpoint's keys can be
// read as another's, whatever bytes its key holds; <seq8> is a uint64, big endian.
//
//	hot/m\x00counter       message ids up to here may have been handed out (uint64, big endian)
//	hot/m\x00client_id     the MQTT client id first used, when the configuration names none
//	hot/m\x00offer_seq     the offer counter of the layout before this one (see LastSeq)
//	hot/m\x00identity      set once the agent's identity is made (identity.go)
//	hot/o<seq8>            OutMsg (JSON), in the order it must be sent
//	hot/e<ep>s             EndpointState (JSON)
//	hot/e<ep>b             the output's bytes as last applied (body.go)
//	hot/e<ep>r             the configuration as received, when a template rendered it (body.go)
//	hot/e<ep>z             set when e<ep>b is a configuration with sealed values, not the output (body.go)
//	hot/e<ep>v             ServerState (JSON, serverstate.go)
//	hot/e<ep>h             the most recent handled ids and their outcomes (handled.go)
//	hot/e<ep>y             the newest applied configurations' metadata (history.go)
//	hot/e<ep>n             the highest signed version accepted (signed.go)
//	hot/e<ep>p<seq8>       Offer received and not yet applied (JSON, without its body); see Pending
//	hot/e<ep>q<seq8>       that offer's body, raw bytes
//	cold/<ep>f             PriorFile: the output as found before the agent first wrote it
//	handled_id/<ep><id>    outcome and sequence of an older handled id (handled.go)
//	handled_seq/<ep><seq8> that id, to evict the oldest first
//
// Databases of the layout before (meta, outbox and endpoints/<ep>/... with sub-buckets per
// endpoint) are migrated by OpenStore in one transaction (migrate.go).
var (
	bucketHot     = []byte("hot")
	bucketCold    = []byte("cold")
	bucketHandID  = []byte("handled_id")
	bucketHandSeq = []byte("handled_seq")
	keyCounter    = []byte("m\x00counter")
	keyClientID   = []byte("m\x00client_id")
	keyOfferSeq   = []byte("m\x00offer_seq")
)

// Kinds of an endpoint's keys in hot.
const (
	kindState    = 's'
	kindBody     = 'b'
	kindRaw      = 'r'
	kindServer   = 'v'
	kindHandled  = 'h'
	kindHistory  = 'y'
	kindPending  = 'p'
	kindPendBody = 'q'
	kindPrior    = 'f' // in cold
)

// epPrefix is <ep>: the endpoint key prefixed by its length.
func epPrefix(ep string) []byte {
	b := binary.AppendUvarint(make([]byte, 0, len(ep)+12), uint64(len(ep)))
	return append(b, ep...)
}

// epKey is hot's key of one of ep's values.
func epKey(ep string, kind byte) []byte {
	return append(append(append(make([]byte, 0, len(ep)+12), 'e'), epPrefix(ep)...), kind)
}

// outboxKey is hot's key of the outbox entry seq.
func outboxKey(seq uint64) []byte { return binary.BigEndian.AppendUint64([]byte{'o'}, seq) }

// Route is where an answer for an offer goes (cmx3: the push topic + /status, at the push's QoS).
type Route struct {
	Topic string `json:"topic"`
	QoS   byte   `json:"qos"`
}

// Offer is a configuration received for an endpoint and not yet applied: everything needed to apply it
// and to answer for it after a crash.
type Offer struct {
	Seq  uint64 `json:"seq"`            // arrival order, unique per database
	ID   string `json:"id,omitempty"`   // the dedupe key (typed JSON text in cmx3); "" = none
	Text string `json:"text,omitempty"` // the id as people and hooks read it
	Body []byte `json:"body,omitempty"` // the configuration as received; stored apart, see SetPending
	// Routes are the answers owed: one per topic the offer arrived on (the same id can come on a
	// push topic and on a pull's answer topic, and each gets its confirmation).
	Routes    []Route   `json:"routes,omitempty"`
	Received  time.Time `json:"received"`      // wall clock, for people only
	RequestID uint64    `json:"rid,omitempty"` // dialect data: request id the offer answered
	// Internal marks an offer the agent made itself (a reload re-applying the stored configuration):
	// nobody waits for its answer.
	Internal bool `json:"internal,omitempty"`
	// Origin is how the offer came (for the history): a push, unless it answers one of the agent's
	// own requests or was imported.
	Origin Origin `json:"origin,omitempty"`
	// Signed marks a verified signed configuration (Body is its payload's config), for
	// anti-rollback; nil for an unsigned one.
	Signed *Signed `json:"signed,omitempty"`

	// Records written before offers had several routes.
	OldTopic string `json:"reply_topic,omitempty"`
	OldQoS   byte   `json:"reply_qos,omitempty"`
}

// AddRoute records one more place to answer, once.
func (o *Offer) AddRoute(r Route) {
	for _, have := range o.Routes {
		if have == r {
			return
		}
	}
	o.Routes = append(o.Routes, r)
}

// EndpointState is what the agent knows of an endpoint's applied configuration.
type EndpointState struct {
	AppliedID   string    `json:"applied_id,omitempty"`
	AppliedText string    `json:"applied_text,omitempty"`
	AppliedHash string    `json:"applied_hash,omitempty"` // hex sha256 of the applied (rendered) body
	AppliedAt   time.Time `json:"applied_at,omitzero"`
	// AppliedSealed is the hex sha256 of the applied configuration as received when it held sealed
	// values: "unchanged" is decided on it, without decrypting.
	AppliedSealed string `json:"applied_sealed,omitempty"`
	// AppliedShape is the hash of everything besides the body that shapes the file (output, mode,
	// owner, group, template): the same bytes under another shape are not "unchanged".
	AppliedShape string    `json:"applied_shape,omitempty"`
	LastText     string    `json:"last_text,omitempty"` // id of the last offer handled, whatever its result
	LastStatus   string    `json:"last_status,omitempty"`
	LastCode     Code      `json:"last_code,omitempty"`
	LastAt       time.Time `json:"last_at,omitzero"`

	// Damaged, in memory only, says why the record did not decode and the state was rebuilt
	// (Tx.StateOrRebuilt); the state written next makes the record whole again.
	Damaged string `json:"-"`
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
	// Request marks a request for the latest configuration (never stored).
	Request bool `json:"-"`
}

// Handled is the stored outcome of an id an endpoint has handled.
type Handled struct {
	Status string
	Code   Code
}

// Store is the agent's bbolt database.
type Store struct {
	db         *bolt.DB
	handledMax int
	recovered  *Recovery
	dropped    []string // damaged records of the nested layout the migration left out

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
	var dropped []string
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketHot, bucketCold, bucketHandID, bucketHandSeq} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		var err error
		dropped, err = migrate(tx)
		return err
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
	// Start on a page cache of single pages (see dropCache): closed, the file is mapped by nobody.
	// It was walked a moment ago; opening it again needs no second walk.
	if err := db.Close(); err != nil {
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	dropCache(path)
	if db, err = openFile(path, lockTimeout, false); err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if handledMax <= 0 {
		handledMax = 1000
	}
	return &Store{db: db, handledMax: handledMax, recovered: rec, dropped: dropped}, nil
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

// hot is the bucket of everything a push changes.
func (t *Tx) hot() *bolt.Bucket { return t.tx.Bucket(bucketHot) }

// LeaseIDs records that message ids up to last+n may be handed out and returns last, the highest id
// that was leased before. Ids are handed out from memory within a lease, so making one costs no
// commit; a restart starts after the lease, so ids never repeat, even those of a lease not used up.
func (t *Tx) LeaseIDs(n uint64) (last uint64, err error) {
	b := t.hot()
	if v := b.Get(keyCounter); len(v) == 8 {
		last = binary.BigEndian.Uint64(v)
	}
	if err := b.Put(keyCounter, u64(last+n)); err != nil {
		return 0, fmt.Errorf("message id counter: %w", err)
	}
	return last, nil
}

// NextIDs reserves n message ids and returns the first; they are never handed out again, across
// restarts included.
func (t *Tx) NextIDs(n int) (uint64, error) {
	last, err := t.LeaseIDs(uint64(n))
	return last + 1, err
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
		return false, fmt.Errorf("decode %q: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %q: %w", key, err)
	}
	return b.Put(key, raw)
}

// State returns an endpoint's state; the zero value when nothing was applied.
func (t *Tx) State(ep string) (EndpointState, error) {
	var st EndpointState
	_, err := getJSON(t.hot(), epKey(ep, kindState), &st)
	return st, err
}

// StateOrRebuilt is State for the readers that go on when the record is damaged (status, metrics,
// the endpoint's machine), so that one bad record costs neither the other endpoints nor this one's
// work. A record that does not decode gives what the records beside it still tell, with damaged
// saying what is wrong: the hash of the applied bytes, so that what is in place stays known (drift
// is still repaired, and the same configuration sent again is found unchanged rather than written
// and hooked again). The id and times it held are lost until the next result rewrites it.
func (t *Tx) StateOrRebuilt(ep string) EndpointState {
	st, err := t.State(ep)
	if err == nil {
		return st
	}
	cause := err
	if u := errors.Unwrap(err); u != nil {
		cause = u // the key is no news to whoever reads this beside the endpoint's name
	}
	st = EndpointState{Damaged: "state record does not decode: " + cause.Error()}
	if body := t.hot().Get(epKey(ep, kindBody)); body != nil && t.BodySealed(ep) {
		st.AppliedSealed = Hash(body) // the output's hash is unknown without decrypting
	} else if body != nil {
		st.AppliedHash = Hash(body)
	}
	return st
}

// Record names one of an endpoint's records for PutRaw.
type Record byte

// The records PutRaw writes.
const (
	RecordState   Record = kindState
	RecordHistory Record = kindHistory
	RecordPending Record = kindPending // the pending offer seq's record, without its body
)

// PutRaw stores raw as ep's record r exactly as given, neither encoded nor checked (seq names the
// pending offer; it is ignored for the others): tests put a record that does not decode in place
// with it, to show what reading one costs.
func (t *Tx) PutRaw(ep string, r Record, seq uint64, raw []byte) error {
	key := epKey(ep, byte(r))
	if r == RecordPending {
		key = pendingKey(ep, seq)
	}
	return t.hot().Put(key, raw)
}

// SetState stores an endpoint's state.
func (t *Tx) SetState(ep string, st EndpointState) error {
	if err := putJSON(t.hot(), epKey(ep, kindState), st); err != nil {
		return fmt.Errorf("endpoint %s state: %w", ep, err)
	}
	return nil
}

// Pending offers: hot/e<ep>p<seq> holds an offer's record, hot/e<ep>q<seq> its body (raw bytes
// beside the record, so a large configuration is neither base64-encoded nor built up in an
// encoder's buffer).
func pendingKey(ep string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(epKey(ep, kindPending), seq)
}

func pendingBody(ep string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(epKey(ep, kindPendBody), seq)
}

// SetPending stores o, received and not yet applied.
func (t *Tx) SetPending(ep string, o *Offer) error {
	b := t.hot()
	meta := *o
	meta.Body = nil
	if err := putJSON(b, pendingKey(ep, o.Seq), &meta); err != nil {
		return err
	}
	body := o.Body
	if body == nil {
		body = []byte{}
	}
	return b.Put(pendingBody(ep, o.Seq), body)
}

// DeletePending removes the pending offer seq.
func (t *Tx) DeletePending(ep string, seq uint64) error {
	b := t.hot()
	if b.Get(pendingKey(ep, seq)) == nil {
		return nil
	}
	if err := b.Delete(pendingBody(ep, seq)); err != nil {
		return err
	}
	return b.Delete(pendingKey(ep, seq))
}

// UnreadablePendingError names the pending records Tx.Pending could not decode, by seq, so that
// the caller can delete them without walking the records again.
type UnreadablePendingError struct {
	Endpoint string
	Seqs     []uint64
	Err      error // the first decode error
}

func (e *UnreadablePendingError) Error() string {
	return fmt.Sprintf("endpoint %s: %d pending offers unreadable (seq %v): %v", e.Endpoint, len(e.Seqs), e.Seqs, e.Err)
}

func (e *UnreadablePendingError) Unwrap() error { return e.Err }

// Pending returns an endpoint's pending offers, oldest first. Records that do not decode are left
// out and named in an *UnreadablePendingError, which comes with the others.
func (t *Tx) Pending(ep string) ([]*Offer, error) {
	b := t.hot()
	prefix := epKey(ep, kindPending)
	var (
		out []*Offer
		bad *UnreadablePendingError
	)
	c := b.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(k) != len(prefix)+8 {
			continue
		}
		seq := binary.BigEndian.Uint64(k[len(prefix):])
		var o Offer
		if err := json.Unmarshal(v, &o); err != nil {
			// One damaged record must not cost the others: they are returned, with the error.
			if bad == nil {
				bad = &UnreadablePendingError{Endpoint: ep, Err: err}
			}
			bad.Seqs = append(bad.Seqs, seq)
			continue
		}
		if o.Body == nil {
			if raw := b.Get(pendingBody(ep, seq)); raw != nil {
				o.Body = bytes.Clone(raw) // raw lives in the mmap only while the transaction is open
			}
		}
		out = append(out, &o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	if bad != nil {
		return out, bad
	}
	return out, nil
}

// PendingSeqs lists the pending offers' seqs of every endpoint that has any, by endpoint key, from
// the keys alone (nothing is decoded).
func (t *Tx) PendingSeqs() map[string][]uint64 {
	out := map[string][]uint64{}
	t.eachPendingKey(func(ep []byte, seq uint64) { out[string(ep)] = append(out[string(ep)], seq) })
	return out
}

// eachPendingKey calls fn with the endpoint key and seq of every pending offer's key: a pending
// offer's key ends with its seq (SetPending writes every one, migrated ones too).
func (t *Tx) eachPendingKey(fn func(ep []byte, seq uint64)) {
	c := t.hot().Cursor()
	for k, _ := c.Seek([]byte{'e'}); k != nil && k[0] == 'e'; k, _ = c.Next() {
		n, w := binary.Uvarint(k[1:])
		if w <= 0 {
			continue
		}
		rest := k[1+w:]
		if uint64(len(rest)) != n+9 || rest[n] != kindPending {
			continue
		}
		fn(rest[:n], binary.BigEndian.Uint64(rest[n+1:]))
	}
}

// LastSeqOf is the highest offer sequence number the database has seen, from the pending offers'
// seqs already listed (PendingSeqs).
func (t *Tx) LastSeqOf(pending map[string][]uint64) uint64 {
	var last uint64
	if v := t.hot().Get(keyOfferSeq); len(v) == 8 {
		last = binary.BigEndian.Uint64(v) // the counter of the layout before
	}
	for _, seqs := range pending {
		for _, seq := range seqs {
			last = max(last, seq)
		}
	}
	return last
}

// PutOutbox stores m under its sequence number, which the caller has assigned (see Outbox).
func (t *Tx) PutOutbox(m OutMsg) error {
	if err := putJSON(t.hot(), outboxKey(m.Seq), m); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// DeleteOutbox removes sent messages from the outbox.
func (t *Tx) DeleteOutbox(seqs ...uint64) error {
	b := t.hot()
	for _, s := range seqs {
		if err := b.Delete(outboxKey(s)); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	return nil
}

// Outbox lists the messages waiting to be sent, oldest first, at most limit (0 = all). The agent
// reads it once, at start; afterwards it keeps the list in memory.
func (t *Tx) Outbox(limit int) ([]OutMsg, error) {
	var out []OutMsg
	c := t.hot().Cursor()
	for k, v := c.Seek([]byte{'o'}); k != nil && k[0] == 'o'; k, v = c.Next() {
		if len(k) != 9 {
			continue
		}
		var m OutMsg
		if err := json.Unmarshal(v, &m); err != nil {
			return nil, fmt.Errorf("outbox entry %x: %w", k[1:], err)
		}
		m.Seq = binary.BigEndian.Uint64(k[1:])
		out = append(out, m)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out, nil
}

// LastOutboxSeq is the highest sequence number in the outbox, 0 when it is empty.
func (t *Tx) LastOutboxSeq() uint64 {
	c := t.hot().Cursor()
	k, _ := c.Seek([]byte{'o' + 1})
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	for ; k != nil && k[0] == 'o'; k, _ = c.Prev() {
		if len(k) == 9 {
			return binary.BigEndian.Uint64(k[1:])
		}
	}
	return 0
}

// ClientID returns the MQTT client id stored by SetClientID; "" when none.
func (t *Tx) ClientID() string { return string(t.hot().Get(keyClientID)) }

// SetClientID stores the MQTT client id the agent derived the first time, so that the gateway's
// identity towards the broker does not change with its endpoint list.
func (t *Tx) SetClientID(id string) error {
	return t.hot().Put(keyClientID, []byte(id))
}

// HasPending reports whether the endpoint has a pending offer, without reading its body.
func (t *Tx) HasPending(ep string) (bool, error) {
	prefix := epKey(ep, kindPending)
	c := t.hot().Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if len(k) == len(prefix)+8 {
			return true, nil
		}
	}
	return false, nil
}
