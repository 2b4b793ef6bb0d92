package engine

import (
	"strconv"
	"strings"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/store"
)

// Result is the outcome of handling an offer, in terms both dialects can express.
type Result struct {
	Status string // human-readable; "ok" when applied
	Code   store.Code
}

// OK reports whether the offer was applied.
func (r Result) OK() bool { return r.Code == store.CodeOK }

var resultOK = Result{Status: cmx.StatusOK, Code: store.CodeOK}

// inbound is a configuration message decoded by a dialect.
type inbound struct {
	offer  *store.Offer // a configuration to apply; nil when the message was refused or carries nothing
	reject *Result      // when set, answer the message with this result at once (offer carries id and route)
	// note is what a server's answer says besides a configuration (cmp7: unchanged, none assigned, an
	// error); it is recorded for status before the offer, if any, is handled.
	note *serverNote
	// own: the message answers one of the agent's own requests (cmx3: P/json/<pull id>; cmp7:
	// P/config/jsonN/<request id>/status). It is the server's latest word: a configuration handled
	// before is applied again when it is not the one in place.
	own bool
}

// dialect is the protocol-specific part of the engine: which topics to subscribe, how a received
// message becomes an offer, how an answer and a request look. Files, coalescing, deduplication and
// the outbox are shared.
type dialect interface {
	// filters are the subscriptions the endpoints need before they request their configuration; it
	// is computed from the whole set, because one endpoint's filter may cover another's.
	filters(eps []*endpoint) []string
	// isConfig reports whether the resource levels after the token carry a configuration for ep
	// (and not, for example, the agent's own answer on an overlapping topic).
	isConfig(ep *endpoint, rest []string) bool
	// decode turns a payload received at topic with qos into an offer or a rejection; size is the
	// payload's length as sent, larger than len(payload) when the transport kept only its start.
	decode(ep *endpoint, topic string, qos byte, payload []byte, size int) inbound
	// answers builds the messages that report r for o; next hands out fresh message ids.
	answers(ep *endpoint, o *store.Offer, r Result, next func() uint64) []OutMsg
	// superseded is the result of an offer replaced by newer before it was applied.
	superseded(newer *store.Offer) Result
	// again reports whether an offer whose id was handled before, with h, is applied again rather
	// than answered with the stored outcome; otherPending says another offer waits or is being
	// written.
	again(h store.Handled, o *store.Offer, st store.EndpointState, otherPending bool) bool
	// lastWordWins reports whether an offer with the id of the one being written, arriving while a
	// newer one waits, replaces the waiting one (the server's latest word), rather than being taken
	// for a redelivery of the first.
	lastWordWins() bool
	// request builds the message asking for the latest configuration.
	request(ep *endpoint, msgID uint64, st store.EndpointState) (topic string, payload []byte)
}

// cmx3 is the seed dialect, 3/CMX.
type cmx3 struct {
	limits cmx.Limits
}

func (cmx3) filters(eps []*endpoint) []string {
	var out []string
	seen := map[string]bool{}
	for _, ep := range eps {
		for _, f := range cmx.PushFilters(ep.prefix) {
			if !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	return out
}

func (cmx3) isConfig(_ *endpoint, rest []string) bool { return cmx.IsPush(rest) }

func (d cmx3) decode(ep *endpoint, topic string, qos byte, payload []byte, size int) inbound {
	o := &store.Offer{Routes: []store.Route{{Topic: cmx.StatusTopic(topic), QoS: qos}}}
	var (
		p   cmx.Push
		err error
	)
	if size > len(payload) {
		err = cmx.TooLarge(payload, size, "id", d.limits)
	} else {
		p, err = cmx.ParsePush(payload, d.limits)
	}
	if err != nil {
		ie, ok := err.(*cmx.InputError)
		if !ok {
			ie = &cmx.InputError{Reason: err.Error()}
		}
		o.ID, o.Text = ie.ID.Key(), ie.ID.Text()
		return inbound{offer: o, reject: &Result{Status: ie.Status(), Code: store.CodeInvalid}}
	}
	o.ID, o.Text = p.ID.Key(), p.ID.Text()
	var refusal *Result
	if o.Body, o.Signed, refusal = ep.e.verifyBody(ep, p.Entries, true, d.limits); refusal != nil {
		return inbound{offer: o, reject: refusal}
	}
	return inbound{offer: o, own: ep.requested(pullIDOf(ep, topic))}
}

// pullIDOf is the request id of a push topic P/json/<request id>; 0 for P/json.
func pullIDOf(ep *endpoint, topic string) uint64 {
	level, ok := strings.CutPrefix(topic, ep.prefix+"/json/")
	if !ok || !cmx.IsRequestID(level) {
		return 0
	}
	id, err := strconv.ParseUint(level, 10, 64)
	if err != nil {
		return 0
	}
	return id
}

// answers confirms o on every topic it arrived on, each at the QoS it came with.
func (cmx3) answers(ep *endpoint, o *store.Offer, r Result, _ func() uint64) []OutMsg {
	out := make([]OutMsg, 0, len(o.Routes))
	payload := cmx.Confirmation(cmx.IDFromKey(o.ID), r.Status)
	for _, rt := range o.Routes {
		out = append(out, OutMsg{Endpoint: ep.key, Topic: rt.Topic, QoS: rt.QoS, Payload: payload})
	}
	return out
}

// again is false: in 3/CMX a handled id is confirmed again, never applied again, unless it answers
// one of the agent's own pulls and is not the one in place (machine.reanswer, contract §3). That
// also heals a damaged state record: the answer at connect is applied again (found unchanged when
// it is the configuration in place: no write, no hook), and its result rewrites the record.
func (cmx3) again(store.Handled, *store.Offer, store.EndpointState, bool) bool { return false }

// lastWordWins is false: in 3/CMX the same id again is the broker redelivering, and the newer push
// that waits came after it.
func (cmx3) lastWordWins() bool { return false }

func (cmx3) superseded(newer *store.Offer) Result {
	return Result{Status: cmx.Superseded(cmx.IDFromKey(newer.ID)), Code: store.CodeSuperseded}
}

func (cmx3) request(ep *endpoint, msgID uint64, _ store.EndpointState) (string, []byte) {
	return cmx.PullTopic(ep.prefix), cmx.PullRequest(msgID)
}
