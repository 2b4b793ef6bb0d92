package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"sync/atomic"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/store"
	"github.com/cmx-agent/cmx-agent/trust"
)

// signing is the engine's trust of the moment: the verifier of the configured keys, swapped
// whole by a reload, and the refusals counted by reason.
type signing struct {
	verifier atomic.Pointer[trust.Verifier]
	refusals refusals[trust.Reason]
}

func newSigning(keys []trust.Key, maxSize int) *signing {
	s := &signing{refusals: newRefusals(trust.Reasons())}
	s.verifier.Store(trust.NewVerifier(keys, maxSize))
	return s
}

// SetTrust replaces the trusted keys; a reload calls it with the keys it read.
func (e *Engine) SetTrust(keys []trust.Key) {
	e.sig.verifier.Store(trust.NewVerifier(keys, int(e.agent.MaxPayload)))
	e.log.Info("trusted keys", "keys", len(keys))
}

// SignatureRefusals counts the signature refusals since the agent started, by reason (every
// reason present, zeros included).
func (e *Engine) SignatureRefusals() map[trust.Reason]uint64 { return e.sig.refusals.snapshot() }

// refused counts a refusal and turns it into the result the dialects answer with (the machine
// logs it with the message's id and topic).
func (e *Engine) refused(err *trust.Error) Result {
	e.sig.refusals.count(err.Reason)
	return Result{Status: err.Error(), Code: store.CodeForbidden}
}

// mayBeSigned is a cheap first look, so that the common unsigned push pays no JSON decoding: an
// envelope holds both member names.
func mayBeSigned(b []byte) bool {
	return bytes.Contains(b, []byte(`"payload"`)) && bytes.Contains(b, []byte(`"signature`))
}

// envelopeOf finds the signed configuration a body carries: cmx3 as the only element of entries
// (array), cmp7 as the config value itself. ok is false for an unsigned body; a signed one that is
// not the only element of entries is refused (it would otherwise be written unverified).
func envelopeOf(body []byte, entries bool) (env []byte, ok bool, err *trust.Error) {
	if !mayBeSigned(body) {
		return nil, false, nil
	}
	if !entries {
		return body, trust.IsEnvelope(body), nil
	}
	var elems []json.RawMessage
	if json.Unmarshal(body, &elems) != nil {
		return nil, false, nil // the dialect has checked it is an array; nothing more to find
	}
	for _, el := range elems {
		if trust.IsEnvelope(el) {
			if len(elems) != 1 {
				return nil, false, &trust.Error{Reason: trust.ReasonMalformed, Detail: "a signed configuration must be the only element of entries"}
			}
			return el, true, nil
		}
	}
	return nil, false, nil
}

// verifyBody checks the body of a configuration for ep: a signed one is verified and bound to the
// endpoint, and its payload's config replaces the body; an unsigned one passes unless the endpoint
// requires signatures. entries says the body is cmx3's entries array, which the payload's config
// must then be too; the config must keep within lim. A refusal is the result to answer with.
func (e *Engine) verifyBody(ep *endpoint, body []byte, entries bool, lim cmx.Limits) ([]byte, *store.Signed, *Result) {
	env, signed, bad := envelopeOf(body, entries)
	if bad != nil {
		r := e.refused(bad)
		return nil, nil, &r
	}
	if !signed {
		if ep.config().RequireSigned {
			r := e.refused(trust.Unsigned())
			return nil, nil, &r
		}
		return body, nil, nil
	}
	return e.verifyEnvelope(ep, env, entries, lim)
}

// verifyEnvelope is verifyBody for the envelope itself.
func (e *Engine) verifyEnvelope(ep *endpoint, env []byte, entries bool, lim cmx.Limits) ([]byte, *store.Signed, *Result) {
	c, err := e.sig.verifier.Load().Verify(env, e.opt.Clock.Now())
	if err != nil {
		return nil, nil, e.refusal(err)
	}
	return e.checkVerified(ep, c, entries, lim)
}

// refusal is the answer to a configuration refused by the signature checks, counted by reason.
func (e *Engine) refusal(err error) *Result {
	var te *trust.Error
	if errors.As(err, &te) {
		r := e.refused(te)
		return &r
	}
	// Verify returns only refusals; this keeps a future error from passing.
	return &Result{Status: "signature: " + err.Error(), Code: store.CodeForbidden}
}

// checkVerified checks a verified configuration c for ep: bound to it, an array of entries where
// the dialect writes entries, within the dialect's limits. It returns the body to apply and what
// anti-rollback needs of the signature, or the refusal.
func (e *Engine) checkVerified(ep *endpoint, c *trust.Config, entries bool, lim cmx.Limits) ([]byte, *store.Signed, *Result) {
	err := c.CheckBinding(ep.token, ep.name)
	if err == nil && entries && !bytes.HasPrefix(bytes.TrimSpace(c.Body), []byte("[")) {
		err = &trust.Error{Reason: trust.ReasonPayload, Detail: "payload: config must be an array (the entries written to the output)"}
	}
	if err != nil {
		return nil, nil, e.refusal(err)
	}
	if r := checkBodyLimits(c.Body, entries, lim); r != nil {
		return nil, nil, r
	}
	return c.Body, &store.Signed{Version: c.Version, Hash: store.Hash(c.Body), KID: c.KID}, nil
}

// checkBodyLimits applies the dialect's limits to a payload's config, which travelled as base64
// inside the envelope where the checks on arrival could not see its nesting or its entries.
func checkBodyLimits(body []byte, entries bool, lim cmx.Limits) *Result {
	var err error
	if entries {
		_, err = cmx.ParsePush(append(append([]byte(`{"entries":`), body...), '}'), lim)
	} else {
		_, err = cmx.ParseConfigResponse(append(append([]byte(`{"configId":"s","config":`), body...), '}'), lim)
	}
	if err == nil {
		return nil
	}
	var ie *cmx.InputError
	if errors.As(err, &ie) {
		return &Result{Status: ie.Status(), Code: store.CodeInvalid}
	}
	return &Result{Status: "invalid payload: " + err.Error(), Code: store.CodeInvalid}
}

// rollback applies anti-rollback to a signed offer about to be applied: its version must not be
// lower than the highest the endpoint has accepted, nor than that of a signed offer being applied
// or waiting (which would otherwise be superseded by an older one), and at the same version its
// body must be the one accepted. It returns the refusal, or nil.
func (m *machine) rollback(o *store.Offer) *Result {
	if o.Signed == nil {
		return nil
	}
	acc := m.accepted()
	highest, hash := acc.Version, acc.Hash
	for _, p := range []*pending{m.running, m.next} {
		if p != nil && p.o != o && p.o.Signed != nil && p.o.Signed.Version > highest {
			highest, hash = p.o.Signed.Version, p.o.Signed.Hash
		}
	}
	_, err := trust.CheckVersion(o.Signed.Version, highest, o.Signed.Hash == hash)
	var te *trust.Error
	if !errors.As(err, &te) {
		return nil
	}
	r := m.ep.e.refused(te)
	return &r
}

// accepted is the highest signed configuration the endpoint has accepted: the one a result not
// yet committed records, or the committed one (read from the store once). A record that does not decode counts as none, as a
// damaged state record does (Tx.StateOrRebuilt): the next accepted configuration rewrites it.
func (m *machine) accepted() store.Accepted {
	if m.j.accepted != nil {
		return *m.j.accepted
	}
	if m.acc != nil {
		return *m.acc
	}
	var acc store.Accepted
	err := m.ep.e.store.View(func(tx *store.Tx) error {
		var err error
		acc, err = tx.Accepted(m.ep.key)
		return err
	})
	if err != nil {
		m.ep.e.log.Error("the highest accepted signed version does not read; taken as none", "endpoint", m.ep.key, "err", err)
	}
	m.acc = &acc
	return acc
}

// recordAccepted puts an accepted signed offer's version in the journal of its result, so that
// it is durable exactly when the result is.
func (m *machine) recordAccepted(o *store.Offer, r Result) {
	if o.Signed == nil || !r.OK() || o.Signed.Version < m.accepted().Version {
		return
	}
	a := store.Accepted{Version: o.Signed.Version, Hash: o.Signed.Hash, KID: o.Signed.KID, At: m.ep.e.opt.Clock.Now()}
	m.j.accepted = &a
	m.j.ops = append(m.j.ops, func(tx *store.Tx, ep string) error { return tx.SetAccepted(ep, a) })
}
