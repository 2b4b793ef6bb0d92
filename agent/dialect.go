package agent

import (
	"github.com/cmx-agent/cmx-agent/cmx"
)

// result is the outcome of handling an offer, in terms both dialects can express.
type result struct {
	Status string // human-readable; "ok" when applied
	Code   int    // HTTP-like: 200 applied, 400 invalid, 409 superseded, 422 rejected, 500 failed
}

func (r result) ok() bool { return r.Code == 200 }

var resultOK = result{Status: cmx.StatusOK, Code: 200}

// inbound is a configuration message decoded by a dialect.
type inbound struct {
	offer  *Offer  // a configuration to apply; nil when the message was refused or carries nothing
	reject *result // when set, answer the message with this result at once (offer carries id and reply route)
	// note is what a server's answer says besides a configuration (cmp7: unchanged, none assigned, an
	// error); it is recorded for status before the offer, if any, is handled.
	note *serverNote
}

// dialect is the protocol-specific part of the agent: which topics to subscribe, how a received
// message becomes an offer, how an answer and a request look. Files, coalescing, deduplication and
// the outbox are shared.
type dialect interface {
	// filters are the subscriptions an endpoint needs before it requests its configuration.
	filters(ep *endpoint) []string
	// isConfig reports whether the resource levels after the token carry a configuration for the
	// agent (and not, for example, the agent's own answer on an overlapping topic).
	isConfig(ep *endpoint, rest []string) bool
	// decode turns a payload received at topic with qos into an offer or a rejection.
	decode(ep *endpoint, topic string, qos byte, payload []byte) inbound
	// answer builds the message that reports r for o, inside the transaction that stores it; ok false
	// means the dialect sends nothing.
	answer(tx *Tx, ep *endpoint, o *Offer, r result) (m OutMsg, ok bool, err error)
	// superseded is the result of an offer replaced by newer before it was applied.
	superseded(newer *Offer) result
	// reapply reports whether an offer whose id was handled before, with status, is applied again
	// rather than answered with the stored status; otherPending says another offer waits or is
	// being written.
	reapply(status string, o *Offer, st EndpointState, otherPending bool) bool
	// request builds the message asking for the latest configuration.
	request(ep *endpoint, msgID uint64, st EndpointState) (topic string, payload []byte)
}

// cmx3 is the seed dialect, 3/CMX.
type cmx3 struct {
	limits cmx.Limits
}

func (cmx3) filters(ep *endpoint) []string { return cmx.PushFilters(ep.prefix) }

func (cmx3) isConfig(_ *endpoint, rest []string) bool { return cmx.IsPush(rest) }

func (d cmx3) decode(ep *endpoint, topic string, qos byte, payload []byte) inbound {
	o := &Offer{ReplyTopic: cmx.StatusTopic(topic), ReplyQoS: qos}
	p, err := cmx.ParsePush(payload, d.limits)
	if err != nil {
		ie, ok := err.(*cmx.InputError)
		if !ok {
			ie = &cmx.InputError{Reason: err.Error()}
		}
		o.ID, o.Text = ie.ID.Key(), ie.ID.Text()
		return inbound{offer: o, reject: &result{Status: ie.Status(), Code: 400}}
	}
	o.ID, o.Text, o.Body = p.ID.Key(), p.ID.Text(), p.Entries
	return inbound{offer: o}
}

func (cmx3) answer(_ *Tx, ep *endpoint, o *Offer, r result) (OutMsg, bool, error) {
	return OutMsg{
		Endpoint: ep.key,
		Topic:    o.ReplyTopic,
		QoS:      o.ReplyQoS,
		Payload:  cmx.Confirmation(cmx.IDFromKey(o.ID), r.Status),
	}, true, nil
}

// reapply is false: in 3/CMX a handled id is confirmed again, never applied again (contract §3).
func (cmx3) reapply(string, *Offer, EndpointState, bool) bool { return false }

func (cmx3) superseded(newer *Offer) result {
	return result{Status: cmx.Superseded(cmx.IDFromKey(newer.ID)), Code: 409}
}

func (cmx3) request(ep *endpoint, msgID uint64, _ EndpointState) (string, []byte) {
	return cmx.PullTopic(ep.prefix), cmx.PullRequest(msgID)
}
