package engine

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/store"
)

// cmp7 is the Kaa 1.x dialect, 7/CMP. An endpoint (token, or token and configuration name) observes
// P/config/jsonN: the server answers at the request's /status topic, or unsolicited at the bare one,
// with {configId, config}. The engine applies the config value through the shared pipeline (offer id
// = configId, so duplicates are handled as in 3/CMX) and reports the outcome at P/applied/jsonN/<rid>
// through the outbox.
type cmp7 struct {
	limits cmx.Limits
}

// filters subscribes each endpoint's P/config/jsonN/#, except a named configuration of a token whose
// default configuration is also configured: the default's P/config/json/# covers it, and mosquitto
// delivers a message once per matching subscription, so a second filter would bring it twice. It is
// computed from the endpoints of the moment, so a reload that adds a default or a name changes it.
func (cmp7) filters(eps []*endpoint) []string {
	hasDefault := map[string]bool{}
	for _, ep := range eps {
		if ep.name == "" {
			hasDefault[ep.token] = true
		}
	}
	var out []string
	seen := map[string]bool{}
	for _, ep := range eps {
		if ep.name != "" && hasDefault[ep.token] {
			continue
		}
		f := cmx.ConfigFilter(ep.prefix, ep.name)
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	return out
}

// isConfig accepts the server's responses and errors for ep's own configuration, and nothing else
// that P/config/json/# carries: requests (the agent's own among them) and other names' topics.
func (cmp7) isConfig(ep *endpoint, rest []string) bool {
	r := cmx.ParseConfigTopic(rest)
	return (r.Kind == cmx.TopicResponse || r.Kind == cmx.TopicError) && r.Name == ep.name
}

func (d cmp7) decode(ep *endpoint, topic string, _ byte, payload []byte, size int) inbound {
	rest, _ := strings.CutPrefix(topic, ep.prefix+"/")
	route := cmx.ParseConfigTopic(strings.Split(rest, "/"))
	if route.Kind == cmx.TopicError {
		n := &serverNote{kind: noteError, rid: route.RequestID}
		if size > len(payload) {
			n.malformed = fmt.Sprintf("error payload too large: %d bytes", size)
			return inbound{note: n}
		}
		e, err := cmx.ParseConfigError(payload, d.limits)
		n.code, n.reason = e.StatusCode, e.ReasonPhrase
		if err != nil {
			n.malformed = err.Error()
		}
		return inbound{note: n}
	}
	var (
		resp cmx.Response
		err  error
	)
	if size > len(payload) {
		err = cmx.TooLarge(payload, size, "configId", d.limits)
	} else {
		resp, err = cmx.ParseConfigResponse(payload, d.limits)
	}
	if err != nil {
		var ie *cmx.InputError
		if !errors.As(err, &ie) {
			ie = &cmx.InputError{Reason: err.Error()}
		}
		// No dedupe key: the same configId may well come again, with its config.
		o := &store.Offer{Text: ie.ID.Text(), RequestID: route.RequestID}
		return inbound{
			offer:  o,
			reject: &Result{Status: ie.Status(), Code: store.CodeInvalid},
			note:   &serverNote{kind: noteAnswered, rid: route.RequestID},
		}
	}
	switch resp.Kind {
	case cmx.Unchanged:
		return inbound{note: &serverNote{kind: noteUnchanged, rid: route.RequestID}}
	case cmx.NoneAssigned:
		return inbound{note: &serverNote{kind: noteNone, rid: route.RequestID}}
	}
	body, signed, refusal := ep.e.verifyBody(ep, resp.Config, false, d.limits)
	if refusal != nil {
		// No dedupe key, as for a payload that does not parse: the same configId is verified
		// again when it comes again (after a reload that added its signer's key, say).
		return inbound{
			offer:  &store.Offer{Text: resp.ConfigID, RequestID: route.RequestID},
			reject: refusal,
			note:   &serverNote{kind: noteAnswered, rid: route.RequestID},
		}
	}
	return inbound{
		offer: &store.Offer{
			ID:        cmx.ConfigIDKey(resp.ConfigID),
			Text:      resp.ConfigID,
			Body:      body,
			Signed:    signed,
			RequestID: route.RequestID,
		},
		note: &serverNote{kind: noteConfig, rid: route.RequestID},
		own:  route.RequestID != 0,
	}
}

// answers builds the applied report. Each report is a request of its own with a fresh request id,
// and replaces an unsent older report of the endpoint: only the latest outcome matters to the
// server. 7/CMP reports only the newest configuration, so a superseded one gets none.
func (cmp7) answers(ep *endpoint, o *store.Offer, r Result, next func() uint64) []OutMsg {
	if r.Code == store.CodeSuperseded {
		return nil
	}
	return []OutMsg{{
		Endpoint: ep.key,
		Topic:    cmx.AppliedTopic(ep.prefix, ep.name, next()),
		QoS:      1,
		Payload:  cmx.AppliedReport(o.Text, int(r.Code), r.Status),
		Replaces: "applied " + ep.key,
	}}
}

// again lets a server go back to a configuration it sent before. The server says which
// configuration is current; the newest message wins, so a configId handled before is applied again
// when it was superseded (never applied), or applied successfully but no longer the applied one, or
// still the applied one while another configuration is pending (which would otherwise end on
// disk), or when it failed for a reason that may pass (5xx: a full disk, a hook that timed out). A
// configId refused for what it is (4xx: invalid, rejected by validate) is reported again with its
// stored outcome instead of running validate and hooks again on every request.
func (cmp7) again(h store.Handled, o *store.Offer, st store.EndpointState, otherPending bool) bool {
	switch {
	case h.Code == store.CodeSuperseded:
		return true
	case h.Code == store.CodeOK:
		return o.ID != st.AppliedID || otherPending
	}
	return h.Code.Transient()
}

// lastWordWins is true: a server that sends back the configuration being written while a newer one
// waits has changed its mind, and its latest word is what must end on disk.
func (cmp7) lastWordWins() bool { return true }

func (cmp7) superseded(newer *store.Offer) Result {
	return Result{Status: cmx.Superseded(cmx.IDFromKey(newer.ID)), Code: store.CodeSuperseded}
}

// request observes the configuration, naming the applied one only when a configuration was really
// applied. Its key must read as a configId: a 3/CMX number id left by a dialect switch does not.
func (cmp7) request(ep *endpoint, msgID uint64, st store.EndpointState) (string, []byte) {
	applied, ok := cmx.ConfigIDFromKey(st.AppliedID)
	return cmx.ConfigRequestTopic(ep.prefix, ep.name, msgID), cmx.ConfigRequest(applied, ok)
}
