package engine

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/store"
	"github.com/cmx-agent/cmx-agent/trust"
)

// ImportResult is the outcome of one imported signed configuration (cmx-agent import).
type ImportResult struct {
	// Endpoint is TOKEN or TOKEN/NAME from the verified payload; "" when it could not be verified.
	Endpoint string `json:"endpoint,omitempty"`
	Version  int64  `json:"version,omitempty"`
	Status   string `json:"status"` // "ok", or the refusal or failure
	OK       bool   `json:"ok"`
}

// Import applies signed configurations given by hand (a technician's USB stick, no network),
// one after the other in the order given: each is verified (an unsigned one is refused), routed
// by its payload's token and name, and applied through the same pipeline as a push, stored on
// arrival so that a crash applies it after the restart. The server learns of each through the
// outbox once connected: cmx3 a confirmation at P/json/status with the payload's id, cmp7 an
// applied report with the payload's id as configId. Import waits for each result until ctx ends;
// one still being applied then is reported as such.
func (e *Engine) Import(ctx context.Context, envelopes []json.RawMessage) []ImportResult {
	out := make([]ImportResult, 0, len(envelopes))
	for _, env := range envelopes {
		out = append(out, e.importOne(ctx, env))
	}
	return out
}

func (e *Engine) importOne(ctx context.Context, env []byte) ImportResult {
	if !trust.IsEnvelope(env) {
		r := e.refused(&trust.Error{Reason: trust.ReasonUnsigned, Detail: "not a signed configuration (import takes only JWS objects)"})
		return ImportResult{Status: r.Status}
	}
	c, err := e.sig.verifier.Load().Verify(env, e.opt.Clock.Now())
	if err != nil {
		return ImportResult{Status: e.refusal(err).Status}
	}
	res := ImportResult{Endpoint: c.Label(), Version: c.Version}
	e.mu.RLock()
	ep := e.eps[c.Label()]
	e.mu.RUnlock()
	if ep == nil {
		res.Status = fmt.Sprintf("no endpoint %s is configured", c.Label())
		return res
	}
	entries := e.kaa.Dialect == config.DialectCMX3
	lim := cmx.DefaultLimits(int(e.agent.MaxPayload))
	// Verified once, above: what is left is the checks that need the endpoint.
	body, signed, refusal := e.checkVerified(ep, c, entries, lim)
	if refusal != nil {
		res.Status = refusal.Status
		return res
	}
	o, err := importOffer(ep, c, entries, lim)
	if err != nil {
		res.Status = err.Error()
		return res
	}
	o.Body, o.Signed, o.Origin = body, signed, store.OriginImport
	done := make(chan Result, 1)
	e.log.Info("configuration imported", "endpoint", ep.key, "id", o.Text, "version", c.Version, "kid", c.KID)
	// QoS 0 in the arrival: nothing holds an acknowledgement for it, so it is stored on arrival
	// (never held); its answer goes at its route's QoS, 1.
	// It came on no connection: a failure to store it marks none.
	rcpt := newReceipt(nil, 0)
	ep.post(evArrival{in: inbound{offer: o}, topic: "import", qos: 0, size: len(env), receipt: rcpt, results: listeners{done}})
	stored := rcpt.Done()
	for {
		select {
		case r := <-done:
			res.Status, res.OK = r.Status, r.OK()
			return res
		case <-stored:
			if err := rcpt.Err(); err != nil {
				// Not stored (a full or read-only state disk), so not applied either.
				res.Status = fmt.Sprintf("not applied: %v", err)
				return res
			}
			stored = nil // stored: its outcome comes through done
		case <-ctx.Done():
			res.Status = "still being applied (see cmx-agent status)"
			return res
		}
	}
}

// importOffer makes the offer of a verified imported configuration c for ep: its id is the
// payload's (cmx3 typed as in a push, cmp7 as configId text), its answer the dialect's report of
// an applied configuration (cmx3 at P/json/status, QoS 1).
func importOffer(ep *endpoint, c *trust.Config, entries bool, lim cmx.Limits) (*store.Offer, error) {
	var id cmx.ID
	if c.ID != nil {
		// The id is read as a push's would be, with the same limits and canonical form.
		p, err := cmx.ParsePush(append(append([]byte(`{"id":`), c.ID...), `,"entries":[]}`...), lim)
		if err != nil {
			return nil, fmt.Errorf("payload id: %w", err)
		}
		id = p.ID
	}
	if !entries {
		return &store.Offer{ID: cmx.ConfigIDKey(id.Text()), Text: id.Text()}, nil
	}
	return &store.Offer{ID: id.Key(), Text: id.Text(), Routes: []store.Route{{Topic: cmx.StatusTopic(cmx.PushTopic(ep.prefix, 0)), QoS: 1}}}, nil
}

// listeners are told an offer's outcome (an import waits for it), in memory only: after a restart
// nobody waits any more.
type listeners []chan<- Result

// notify tells whoever waits for the offer's outcome what it is, once; it never blocks.
func (l *listeners) notify(r Result) {
	for _, ch := range *l {
		select {
		case ch <- r:
		default:
		}
	}
	*l = nil
}
