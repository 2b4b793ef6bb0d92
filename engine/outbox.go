package engine

import (
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/clock"
)

// Outbox is what the agent has to send: answers (confirmations, applied reports) and requests. The
// transport reads it in order (Next), publishes, and reports each broker acknowledgement
// (Acked). It lives in memory; the durable part mirrors the database's outbox bucket, read once at
// start.
//
// An entry is one of:
//   - durable: a QoS 1 answer committed to the database; sent on every connection until acked, then
//     deleted from the database lazily: with the next commit of any endpoint, or when the agent
//     stops. A commit of its own for it would double what a lone push costs the flash; the price is
//     that after a crash the answers acknowledged since the last commit are sent once more;
//   - early: a QoS 1 answer published before its commit, because the message it answers is still
//     unacknowledged (see journal.answer); it becomes durable with the commit;
//   - volatile: a QoS 0 answer (sent once) or a request (valid on the connection it was made for).
type Outbox struct {
	mu      sync.Mutex
	entries []*outEntry // by seq
	bySeq   map[uint64]*outEntry
	last    uint64 // the last seq handed out
	wake    chan struct{}
	// acked are durable entries the broker has acknowledged, to delete from the database.
	acked    []uint64
	replaces map[string]*outEntry
	// poisoned are the topics (by poisonKey) whose messages were in flight when the broker ended a
	// connection, and have not been acknowledged since (see Ended).
	poisoned map[string]*poison
	clock    clock.Clock
}

// poison is what Ended knows of a topic.
type poison struct {
	closes int           // connections in a row ended while a message to it waited for its PUBACK
	until  time.Time     // set aside until then
	wait   time.Duration // how long it was set aside for last
}

// The wait of an answer set aside: an hour, doubling with each new set-aside up to a day.
const (
	asideFirst = time.Hour
	asideMax   = 24 * time.Hour
)

// PoisonCloses is how many connections in a row may end between an answer's publish and its
// PUBACK before the answer is set aside (see Outbox.Ended).
const PoisonCloses = 3

type outEntry struct {
	ob  *Outbox
	msg OutMsg
	// gen restricts a request to the connection it was made on; 0 = any.
	gen     uint64
	durable bool // in the database
	stored  bool // put in the database by its commit (not when acknowledged or replaced first)
	visible bool // may be sent (early, durable or volatile)
	acked   bool
	sent    bool      // a volatile QoS 0 entry goes out once
	sentGen uint64    // the connection it was last handed to
	made    time.Time // when it was made (or, for one stored earlier, when the agent started)

}

func newOutbox(last uint64, stored []OutMsg, clk clock.Clock) *Outbox {
	o := &Outbox{last: last, bySeq: map[uint64]*outEntry{}, wake: make(chan struct{}, 1), replaces: map[string]*outEntry{},
		poisoned: map[string]*poison{}, clock: clk}
	for _, m := range stored {
		en := &outEntry{msg: m, durable: true, visible: true, made: clk.Now()}
		o.insert(en)
		if m.Replaces != "" {
			o.replaces[m.Replaces] = en
		}
		if m.Seq > o.last {
			o.last = m.Seq
		}
	}
	return o
}

func (o *Outbox) insert(en *outEntry) {
	o.entries = append(o.entries, en)
	o.bySeq[en.msg.Seq] = en
}

func (o *Outbox) remove(en *outEntry) {
	delete(o.bySeq, en.msg.Seq)
	i := sort.Search(len(o.entries), func(i int) bool { return o.entries[i].msg.Seq >= en.msg.Seq })
	if i < len(o.entries) && o.entries[i] == en {
		o.entries = append(o.entries[:i], o.entries[i+1:]...)
	}
	if en.msg.Replaces != "" && o.replaces[en.msg.Replaces] == en {
		delete(o.replaces, en.msg.Replaces)
	}
}

func (o *Outbox) poke() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// Wake is signalled when there may be something new to send.
func (o *Outbox) Wake() <-chan struct{} { return o.wake }

// add takes an answer; early makes it visible before its commit. A QoS 0 answer is volatile and
// visible at once.
func (o *Outbox) add(m OutMsg, early bool) *outEntry {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.last++
	m.Seq = o.last
	en := &outEntry{ob: o, msg: m, visible: early || m.QoS == 0, made: o.clock.Now()}
	if m.Replaces != "" {
		// Only the newest report of an endpoint is worth sending: an older one not yet sent goes.
		if old := o.replaces[m.Replaces]; old != nil && !old.sent {
			o.remove(old)
			if old.durable {
				o.acked = append(o.acked, old.msg.Seq)
			}
		}
		o.replaces[m.Replaces] = en
	}
	o.insert(en)
	if en.visible {
		o.poke()
	}
	return en
}

// request queues a request for the connection gen.
func (o *Outbox) request(m OutMsg, gen uint64) {
	o.mu.Lock()
	o.last++
	m.Seq = o.last
	o.insert(&outEntry{msg: m, gen: gen, visible: true})
	o.mu.Unlock()
	o.poke()
}

// committed: en is in the database now.
func (o *Outbox) committed(en *outEntry) {
	if en.msg.QoS == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if !en.stored {
		return
	}
	en.durable, en.visible = true, true
	if en.acked {
		// Acknowledged before its commit finished: it is in the database only to be deleted.
		o.acked = append(o.acked, en.msg.Seq)
	}
	o.poke()
}

// storable reports whether en still needs to go to the database, and marks it so: an entry already
// acknowledged, or replaced by a newer report, does not.
func (o *Outbox) storable(en *outEntry) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	en.stored = en.msg.QoS > 0 && !en.acked && o.bySeq[en.msg.Seq] == en
	return en.stored
}

// Next returns, in order, up to n entries that may be sent on connection gen and have not been
// handed to it yet. An answer can become sendable after later ones (its commit came after their
// early publish), so this is not a plain cursor over sequence numbers; the entries are in memory, and
// nothing is decoded.
func (o *Outbox) Next(gen uint64, n int) []OutMsg {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.clock.Now()
	var out []OutMsg
	for _, en := range o.entries {
		if len(out) == n {
			break
		}
		if !en.visible || en.sentGen == gen || en.gen != 0 && en.gen != gen {
			continue
		}
		if p := o.poisonOf(en.msg.Topic); p != nil && now.Before(p.until) {
			continue
		}
		en.sentGen = gen
		out = append(out, en.msg)
	}
	return out
}

// Sent records that seq was handed to the connection. A QoS 0 entry or a request is then done:
// neither is sent again.
func (o *Outbox) Sent(seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	en := o.bySeq[seq]
	if en == nil {
		return
	}
	en.sent = true
	if en.msg.QoS == 0 || en.gen != 0 {
		o.remove(en)
	}
}

// Acked records the broker's acknowledgement of seq on the connection it was sent on.
func (o *Outbox) Acked(seq uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	en := o.bySeq[seq]
	if en == nil {
		return
	}
	o.remove(en)
	en.acked = true
	if en.durable {
		o.acked = append(o.acked, seq)
	}
}

// Delivered records the broker's acknowledgement of m on the connection it was sent on (Acked),
// which clears its topic of what Ended counted.
func (o *Outbox) Delivered(m OutMsg) {
	o.Acked(m.Seq)
	o.mu.Lock()
	if len(o.poisoned) > 0 {
		delete(o.poisoned, poisonKey(m.Topic))
	}
	o.mu.Unlock()
}

// poisonOf is the record of topic's closes; nil when none. Every answer sent asks: when no topic
// has any (nearly always), the key is not even computed. o.mu must be held.
func (o *Outbox) poisonOf(topic string) *poison {
	if len(o.poisoned) == 0 {
		return nil
	}
	return o.poisoned[poisonKey(topic)]
}

// poisonKey is topic with every level that is a request id (all digits, 1/KP) as "+": an ACL
// refuses a resource path, and the answer to each new pull or request has a topic of its own.
func poisonKey(topic string) string {
	levels := strings.Split(topic, "/")
	for i, l := range levels {
		if l != "" && strings.Trim(l, "0123456789") == "" {
			levels[i] = "+"
		}
	}
	return strings.Join(levels, "/")
}

// Suspect reports whether a connection ended while a message to topic waited for its PUBACK, with
// none acknowledged since. The transport publishes such a message alone, nothing else in flight,
// so that a close that follows is its doing and no other message's.
func (o *Outbox) Suspect(topic string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.poisonOf(topic) != nil
}

// SetAside is a topic Ended set aside.
type SetAside struct {
	Topic    string // request ids as "+" (poisonKey)
	Endpoint string
	Closes   int           // connections ended in a row with a message to it in flight
	Wait     time.Duration // until it is sent again
}

// Ended records that the broker ended a connection while msgs, published on it, waited for their
// PUBACK. MQTT 3.1.1 has no negative PUBACK, so a broker that refuses a publish (RabbitMQ's topic
// permissions, EMQX's acl_deny_action = disconnect) closes the connection instead; sent again on
// every connection, such a message would cut every connection of the agent, forever. A topic whose
// messages met that on PoisonCloses connections in a row (after the first, each published alone)
// is set aside: its messages stay in the outbox, and the database, but go again only after an hour,
// then two, doubling up to a day, or after a restart; an acknowledgement clears it. It returns the
// topics set aside by this call, to be logged.
func (o *Outbox) Ended(msgs []OutMsg) []SetAside {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []SetAside
	seen := map[string]bool{}
	for _, m := range msgs {
		key := poisonKey(m.Topic)
		if seen[key] {
			continue
		}
		seen[key] = true
		p := o.poisoned[key]
		if p == nil {
			p = &poison{}
			o.poisoned[key] = p
		}
		p.closes++
		if p.closes < PoisonCloses {
			continue
		}
		p.wait = min(max(2*p.wait, asideFirst), asideMax)
		p.until = o.clock.Now().Add(p.wait)
		o.clock.AfterFunc(p.wait, o.poke)
		out = append(out, SetAside{Topic: key, Endpoint: m.Endpoint, Closes: p.closes, Wait: p.wait})
	}
	return out
}

// setAside counts the answers waiting whose topic is set aside.
func (o *Outbox) setAside() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	now, n := o.clock.Now(), 0
	for _, en := range o.entries {
		if p := o.poisonOf(en.msg.Topic); p != nil && en.gen == 0 && en.msg.QoS > 0 && now.Before(p.until) {
			n++
		}
	}
	return n
}

// dropRequests forgets the requests made for connection gen (it has ended).
func (o *Outbox) dropRequests(gen uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	kept := o.entries[:0]
	for _, en := range o.entries {
		if en.gen == gen {
			delete(o.bySeq, en.msg.Seq)
			continue
		}
		kept = append(kept, en)
	}
	clear(o.entries[len(kept):])
	o.entries = kept
}

// takeAcked hands the acknowledged durable entries to a commit that deletes them; put them back
// with giveBack when that commit fails.
func (o *Outbox) takeAcked() []uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.acked
	o.acked = nil
	return s
}

func (o *Outbox) giveBack(s []uint64) {
	if len(s) == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.acked = append(s, o.acked...)
}

// pendingByEndpoint counts the answers not yet acknowledged, per endpoint.
func (o *Outbox) pendingByEndpoint() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := map[string]int{}
	for _, en := range o.entries {
		if en.gen == 0 && en.msg.QoS > 0 && en.visible {
			n[en.msg.Endpoint]++
		}
	}
	return n
}

// Waiting lists the answers not yet acknowledged by the broker, oldest first.
func (o *Outbox) Waiting() []OutMsg {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []OutMsg
	for _, en := range o.entries {
		if en.gen == 0 && en.msg.QoS > 0 {
			out = append(out, en.msg)
		}
	}
	return out
}

// depth counts the answers not yet acknowledged and tells when the oldest was made.
func (o *Outbox) depth() (n int, oldest time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, en := range o.entries {
		if en.gen != 0 || en.msg.QoS == 0 {
			continue
		}
		n++
		if oldest.IsZero() || en.made.Before(oldest) {
			oldest = en.made
		}
	}
	return n, oldest
}
