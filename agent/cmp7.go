package agent

import (
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
)

// cmp7 is the Kaa 1.x dialect, 7/CMP. An endpoint (token, or token and configuration name) observes
// P/config/jsonN: the server answers at the request's /status topic, or unsolicited at the bare one,
// with {configId, config}. The agent applies the config value through the shared pipeline (offer id =
// configId, so duplicates are handled as in 3/CMX) and reports the outcome at P/applied/jsonN/<rid>
// through the outbox.
type cmp7 struct {
	limits cmx.Limits
	// hasDefault lists the tokens that have an endpoint for the default configuration: its
	// subscription P/config/json/# also covers the token's named configurations.
	hasDefault map[string]bool
}

func newCMP7(cfg *config.Config) cmp7 {
	d := cmp7{limits: cmx.DefaultLimits(int(cfg.Agent.MaxPayload)), hasDefault: map[string]bool{}}
	for _, ec := range cfg.Endpoints {
		if ec.Name == "" {
			d.hasDefault[ec.Token] = true
		}
	}
	return d
}

// codeSuperseded is the result code of an offer replaced by a newer one; 7/CMP reports only the
// newest configuration, so it is never sent.
const codeSuperseded = 409

func (d cmp7) filters(ep *endpoint) []string {
	if ep.cfg.Name != "" && d.hasDefault[ep.cfg.Token] {
		// mosquitto delivers a message once per matching subscription: a second, overlapping one
		// would bring every named configuration twice.
		return nil
	}
	return []string{cmx.ConfigFilter(ep.prefix, ep.cfg.Name)}
}

// isConfig accepts the server's responses and errors for ep's own configuration, and nothing else
// that P/config/json/# carries: requests (the agent's own among them) and other names' topics.
func (cmp7) isConfig(ep *endpoint, rest []string) bool {
	r := cmx.ParseConfigTopic(rest)
	return (r.Kind == cmx.TopicResponse || r.Kind == cmx.TopicError) && r.Name == ep.cfg.Name
}

func (d cmp7) decode(ep *endpoint, topic string, qos byte, payload []byte) inbound {
	rest, _ := strings.CutPrefix(topic, ep.prefix+"/")
	route := cmx.ParseConfigTopic(strings.Split(rest, "/"))
	if route.Kind == cmx.TopicError {
		e, err := cmx.ParseConfigError(payload, d.limits)
		n := &serverNote{kind: noteError, rid: route.RequestID, code: e.StatusCode, reason: e.ReasonPhrase}
		if err != nil {
			n.malformed = err.Error()
		}
		return inbound{note: n}
	}
	resp, err := cmx.ParseConfigResponse(payload, d.limits)
	if err != nil {
		var ie *cmx.InputError
		if !errors.As(err, &ie) {
			ie = &cmx.InputError{Reason: err.Error()}
		}
		// No dedupe key: the same configId may well come again, with its config.
		o := &Offer{Text: ie.ID.Text(), ReplyQoS: 1, RequestID: route.RequestID}
		return inbound{
			offer:  o,
			reject: &result{Status: ie.Status(), Code: 400},
			note:   &serverNote{kind: noteAnswered, rid: route.RequestID},
		}
	}
	switch resp.Kind {
	case cmx.Unchanged:
		return inbound{note: &serverNote{kind: noteUnchanged, rid: route.RequestID}}
	case cmx.NoneAssigned:
		return inbound{note: &serverNote{kind: noteNone, rid: route.RequestID}}
	}
	return inbound{
		offer: &Offer{
			ID:        cmx.ConfigIDKey(resp.ConfigID),
			Text:      resp.ConfigID,
			Body:      resp.Config,
			ReplyQoS:  1,
			RequestID: route.RequestID,
		},
		note: &serverNote{kind: noteConfig, rid: route.RequestID},
	}
}

// answer builds the applied report. Each report is a request of its own with a fresh request id, and
// replaces an unsent older report of the endpoint: only the latest outcome matters to the server.
func (cmp7) answer(tx *Tx, ep *endpoint, o *Offer, r result) (OutMsg, bool, error) {
	if r.Code == codeSuperseded {
		return OutMsg{}, false, nil
	}
	rid, err := tx.NextIDs(1)
	if err != nil {
		return OutMsg{}, false, err
	}
	return OutMsg{
		Endpoint: ep.key,
		Topic:    cmx.AppliedTopic(ep.prefix, ep.cfg.Name, rid),
		QoS:      1,
		Payload:  cmx.AppliedReport(o.Text, r.Code, r.Status),
		Replaces: "applied " + ep.key,
	}, true, nil
}

// reapply lets a server go back to a configuration it sent before. The server says which
// configuration is current; the newest message wins, so a configId handled before is applied again
// when it was superseded (never applied), or applied successfully but no longer the applied one, or
// still the applied one while another configuration is pending (which would otherwise end on
// disk). A configId that failed is reported again with its stored status instead of running
// validate and hooks again on every request.
func (cmp7) reapply(status string, o *Offer, st EndpointState, otherPending bool) bool {
	switch {
	case strings.HasPrefix(status, "superseded"):
		return true
	case status == cmx.StatusOK:
		return o.ID != st.AppliedID || otherPending
	}
	return false
}

func (cmp7) superseded(newer *Offer) result {
	return result{Status: cmx.Superseded(cmx.IDFromKey(newer.ID)), Code: codeSuperseded}
}

// request observes the configuration, naming the applied one only when a configuration was really
// applied. Its key must read as a configId: a 3/CMX number id left by a dialect switch does not.
func (cmp7) request(ep *endpoint, msgID uint64, st EndpointState) (string, []byte) {
	ep.lastRID.Store(msgID)
	applied, ok := cmx.ConfigIDFromKey(st.AppliedID)
	return cmx.ConfigRequestTopic(ep.prefix, ep.cfg.Name, msgID), cmx.ConfigRequest(applied, ok)
}

type noteKind int

const (
	noteConfig    noteKind = iota // a configuration came
	noteAnswered                  // a response came that could not be used (it is answered 400)
	noteUnchanged                 // {}: the endpoint has the current configuration
	noteNone                      // configId "" and config null: the server has none for the endpoint
	noteError                     // the server refused the request
)

// serverNote is what a server's response says about an endpoint besides a configuration.
type serverNote struct {
	kind      noteKind
	rid       uint64 // request id of the response's topic; 0 = unsolicited or none
	code      int    // noteError: statusCode
	reason    string // noteError: reasonPhrase
	malformed string // noteError: what was wrong with the error payload
}

// noteServer records what the server said in the endpoint's ServerState (for status), logs it, and
// repeats a refused request with backoff. Any usable response ends the backoff.
func (a *Agent) noteServer(ep *endpoint, topic string, n serverNote) error {
	now := a.opt.Now()
	ep.mu.Lock()
	var old, st ServerState
	err := a.store.View(func(tx *Tx) error {
		var err error
		old, err = tx.ServerState(ep.key)
		return err
	})
	if err == nil {
		st = old
		switch n.kind {
		case noteError:
			st.ErrorCode, st.ErrorReason, st.ErrorAt = n.code, n.reason, now
			st.Errors++
		case noteNone:
			if !st.NoneAssigned {
				st.NoneAssigned, st.NoneAssignedAt = true, now
			}
		case noteConfig:
			st.NoneAssigned, st.NoneAssignedAt = false, time.Time{}
		}
		if n.kind != noteError {
			st.ErrorCode, st.ErrorReason, st.ErrorAt, st.Errors = 0, "", time.Time{}, 0
		}
		// Only a change is written: an unchanged answer ({}) costs no commit.
		if st != old {
			err = a.store.Update(func(tx *Tx) error { return tx.SetServerState(ep.key, st) })
		}
	}
	ep.mu.Unlock()
	if err != nil {
		return err
	}

	switch n.kind {
	case noteError:
		args := []any{"endpoint", ep.key, "topic", topic, "status_code", n.code, "reason", n.reason, "errors_in_a_row", st.Errors}
		if n.malformed != "" {
			args = append(args, "malformed", n.malformed)
		}
		if latest := ep.lastRID.Load(); n.rid != 0 && n.rid != latest {
			// An error for an older request: a newer one is already out.
			a.log.Warn("server refused an earlier configuration request", args...)
			return nil
		}
		if d, ok := a.sess.retryRequest(ep); ok {
			args = append(args, "retry_in", d.Round(time.Millisecond))
		}
		a.log.Warn("server refused the configuration request", args...)
	case noteNone:
		ep.errRetry.reset()
		a.log.Info("server has no configuration for the endpoint; output left as it is", "endpoint", ep.key, "topic", topic)
	case noteUnchanged:
		ep.errRetry.reset()
		a.log.Debug("configuration unchanged", "endpoint", ep.key, "topic", topic)
	default:
		ep.errRetry.reset()
	}
	return nil
}

// errRetry repeats a configuration request the server refused: 1 s doubling to 5 min, jittered. At
// most one repeat is scheduled at a time; a usable response cancels it and resets the backoff.
type errRetry struct {
	mu      sync.Mutex
	bo      backoff
	epoch   uint64 // bumped by reset: a repeat scheduled before it does not fire
	pending bool
}

// Backoff bounds of a refused request.
const (
	errRetryMin = time.Second
	errRetryMax = 5 * time.Minute
)

// schedule returns the delay of the next repeat and the epoch it belongs to; ok is false when a
// repeat is already scheduled.
func (r *errRetry) schedule() (d time.Duration, epoch uint64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending {
		return 0, 0, false
	}
	if r.bo.min == 0 {
		r.bo = backoff{min: errRetryMin, max: errRetryMax}
	}
	r.pending = true
	return r.bo.next(), r.epoch, true
}

// fire reports whether the repeat scheduled in epoch is still wanted, and clears it.
func (r *errRetry) fire(epoch uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if epoch != r.epoch {
		return false
	}
	r.pending = false
	return true
}

func (r *errRetry) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bo.reset()
	r.epoch++
	r.pending = false
}

// retryRequest schedules a repeat of ep's request on the current connection. A connection that ends
// first cancels it: the next connection requests anyway.
func (s *session) retryRequest(ep *endpoint) (time.Duration, bool) {
	d, epoch, ok := ep.errRetry.schedule()
	if !ok {
		return 0, false
	}
	gen, done, client := s.current()
	if done == nil {
		ep.errRetry.fire(epoch)
		return 0, false
	}
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-done:
			ep.errRetry.fire(epoch)
			return
		case <-t.C:
		}
		if !ep.errRetry.fire(epoch) {
			return
		}
		if g, _, _ := s.current(); g != gen {
			return
		}
		s.a.log.Info("asking again for the configuration after an error", "endpoint", ep.key, "waited", d.Round(time.Millisecond))
		s.request(client, []*endpoint{ep})
	}()
	return d, true
}
