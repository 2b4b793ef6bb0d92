package transport

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/internal/backoff"
)

// What the session does when the broker refuses its SUBSCRIBE.
//
// A broker may refuse the SUBSCRIBE of a session it cannot serve, and may do so on every
// reconnect. RabbitMQ with classic session queues is the case seen in the field: when the node
// homing the session's queue dies, every other node answers the SUBSCRIBE by closing the
// connection (no SUBACK), for the resumed session and for a clean session of the same client id
// alike, because the queue's name comes from the client id; only a QoS 0 subscription (another
// queue) is granted. Reconnecting to the same refusal would keep the gateway deaf until the node
// returns, while the server's pushes are acknowledged by the broker and dropped.
//
// So the session climbs down a ladder, one rung per refusal, and back up on probes:
//
//	resume ──refused──▶ fresh ──refused──▶ QoS 0 ──probe due──▶ fresh (probe)
//	  ▲                   │ subscribed      ▲  │                   │
//	  └───────────────────┘                 │  └─QoS 0 refused:    │
//	                                        │    back to resume    │
//	                                        └──────refused─────────┘
//
// The rungs:
//   - resume: the configured session (persistent unless clean_session), QoS 1. A SUBACK 0x80 is a
//     refusal at once. A connection closed before the SUBACK is one only when such closes have
//     followed each other, with nothing else between, for closeWindow: a broker's hiccup (a quorum
//     queue's leader election, a takeover between nodes) can close a connection at that moment
//     too, and the next rung throws away what the broker queued for the session.
//   - fresh: a clean-session connection that only discards the old session, then the configured
//     session again, new, at QoS 1 (with clean_session = true every connection is clean, and fresh
//     is resume). One refusal is enough here: the session is new, nothing is lost by going on.
//   - QoS 0: a clean session subscribed at QoS 0. Pushes arrive while connected (the broker
//     delivers at most once, and their confirmations go at QoS 0, as the protocol wants them at
//     the push's QoS); what is pushed while disconnected is not kept, and the pull at every
//     connect brings the newest configuration. A closed connection here is a fault, not a refusal;
//     a SUBACK 0x80 (an ACL, not a queue) starts the ladder again from resume.
//   - probe: when the probe delay is over (ProbeMin doubled per refused probe up to ProbeMax,
//     jittered; kept across reconnects), the session tries fresh again; a refused probe goes
//     straight back to QoS 0. The probe discards the old session rather than resuming it: what it
//     held is older than what QoS 0 and the pulls have brought since, and resuming it would apply
//     stale configurations before the pull's answer put the newest back.
//
// Another client id would get a QoS 1 session on a surviving node, but brokers key ACLs, session
// limits and bridges on the client id, so the agent never changes it on its own.
type ladder struct {
	persistent bool // the configuration wants a persistent session (clean_session false)
	step       rung
	// closedSince is when the first of the resumed session's SUBSCRIBEs answered by a closed
	// connection, in a row, was (zero when the last attempt was anything else); closes counts them.
	closedSince time.Time
	closes      int
	// startedOver is set when even QoS 0 was refused, until a SUBSCRIBE is granted: the broker
	// refuses whatever the agent asks (an ACL), and the rungs no longer restart the backoff, so
	// the ladder goes round at most once a minute.
	startedOver bool
	probing     bool      // this fresh is a probe from QoS 0
	probes      int       // probes refused since QoS 0 began
	probeAt     time.Time // QoS 0: when to probe
}

// rung is where on the ladder the session is.
type rung int

const (
	rungResume rung = iota // the configured session, QoS 1
	rungFresh              // the old session discarded, then the configured one, QoS 1
	rungQoS0               // a clean session at QoS 0, probing back
)

// Timing of the ladder.
const (
	// closeWindow and minCloses: SUBSCRIBEs of the resumed session answered by a closed
	// connection count as a refusal once there have been minCloses of them in a row over
	// closeWindow. The first close restarts the backoff of refused attempts (1 s doubling), so
	// that is the sixth close, 15 to 31 s after the first.
	closeWindow = 15 * time.Second
	minCloses   = 3
	// ProbeMin and ProbeMax bound the wait at QoS 0 before a probe.
	ProbeMin = time.Minute
	ProbeMax = 30 * time.Minute
)

// plan says how the next connection is made at now: first a clean connection that discards the
// old session (discard), then one with clean session clean, subscribing at qos.
func (l *ladder) plan(now time.Time) (discard, clean bool, qos byte) {
	if l.step == rungQoS0 && !l.probeAt.IsZero() && !now.Before(l.probeAt) {
		l.step, l.probing, l.probeAt = rungFresh, true, time.Time{}
	}
	switch l.step {
	case rungFresh:
		return l.persistent, !l.persistent, 1
	case rungQoS0:
		return false, true, 0
	default:
		return false, !l.persistent, 1
	}
}

// verdict is what the ladder makes of a refused SUBSCRIBE.
type verdict struct {
	line    string // for the log
	moved   bool   // the next connection is on another rung
	restart bool   // the next attempt is a new one: the backoff of refused attempts starts over
}

// refused moves the ladder after a refused SUBSCRIBE at now; closed says the refusal was a
// connection closed before the SUBACK.
func (l *ladder) refused(closed bool, now time.Time, r *rand.Rand) verdict {
	const lost = " (pushes made while disconnected are not kept; the latest configuration is requested at every connection)"
	down := func(line string) verdict { return verdict{line: line, moved: true, restart: !l.startedOver} }
	switch l.step {
	case rungResume:
		if closed {
			first := l.closedSince.IsZero()
			if first {
				l.closedSince = now
			}
			l.closes++
			if l.closes < minCloses || now.Sub(l.closedSince) < closeWindow {
				return verdict{line: "connection closed before the SUBACK; reconnecting (closes that go on for 15s count as a refusal)", restart: first && !l.startedOver}
			}
		}
		l.closedSince, l.closes = time.Time{}, 0
		if l.persistent {
			l.step = rungFresh
			return down("the broker refuses the subscription of the resumed session; discarding it for a fresh one (messages queued in the old one are lost; the latest configuration is requested)")
		}
		l.toQoS0(now, r)
		return down("the broker refuses the QoS 1 subscription; subscribing at QoS 0" + lost)
	case rungFresh:
		if l.probing {
			l.probing = false
			l.probes++
			l.toQoS0(now, r)
			return down("the broker still refuses the QoS 1 subscription; staying at QoS 0")
		}
		l.toQoS0(now, r)
		return down("the broker refuses the QoS 1 subscription of a fresh session too; subscribing at QoS 0" + lost)
	default:
		if closed {
			return verdict{line: "connection closed before the SUBACK at QoS 0; reconnecting"}
		}
		l.step, l.probes, l.probeAt, l.startedOver = rungResume, 0, time.Time{}, true
		return verdict{line: "the broker refuses the QoS 0 subscription too; starting over with the configured session, with backoff", moved: true}
	}
}

func (l *ladder) toQoS0(now time.Time, r *rand.Rand) {
	l.step = rungQoS0
	l.probeAt = now.Add(l.probeDelay(r))
}

// subscribed moves the ladder after a granted SUBSCRIBE. It returns a line for the log, or "".
func (l *ladder) subscribed() string {
	l.closedSince, l.closes, l.startedOver = time.Time{}, 0, false
	if l.step != rungFresh {
		return ""
	}
	l.step = rungResume
	if l.probing {
		l.probing, l.probes = false, 0
		return "the broker grants the QoS 1 subscription again"
	}
	return ""
}

// probeNow makes the next connection the probe (its timer fired while connected at QoS 0).
func (l *ladder) probeNow() {
	if l.step == rungQoS0 {
		l.step, l.probing, l.probeAt = rungFresh, true, time.Time{}
	}
}

// interrupted records an attempt that ended before any answer to its SUBSCRIBE (a refused
// connection, a SUBACK that never came): closes before it and after it are not in a row.
func (l *ladder) interrupted() { l.closedSince, l.closes = time.Time{}, 0 }

// probeDelay is how long QoS 0 lasts before a probe: ProbeMin doubled per refused probe, at most
// ProbeMax, drawn from [d/2, d] so that a fleet's probes spread out.
func (l *ladder) probeDelay(r *rand.Rand) time.Duration {
	return backoff.Policy{Min: ProbeMin, Max: ProbeMax}.Nth(l.probes+1, r)
}

// RefusedError is a SUBSCRIBE the broker refused: with a SUBACK failure code (0x80) for every
// filter (Filters), or by closing the connection before any SUBACK (Closed; Err is how paho ended
// the SUBSCRIBE).
type RefusedError struct {
	Filters []string
	Closed  bool
	Err     error
}

func (e *RefusedError) Error() string {
	if e.Closed {
		return fmt.Sprintf("subscribe: the broker closed the connection instead of answering (refused, or the session's queue is unavailable): %v", e.Err)
	}
	return fmt.Sprintf("subscribe %s: refused by the broker (not authorised, or the session's queue is unavailable)", strings.Join(e.Filters, ", "))
}

func (e *RefusedError) Unwrap() error { return e.Err }

// subResult is a granted SUBSCRIBE: the lowest QoS granted, and the filters the broker refused
// (0x80) while it granted others. Those are an ACL's doing, not the session's: the other
// endpoints go on working, and status names the refused ones.
type subResult struct {
	granted byte
	refused []string
}

// subscribe subscribes filters at qos and waits for the SUBACK. paho fails a pending SUBSCRIBE
// when it loses the connection: an error with the connection gone after the SUBSCRIBE was sent is
// a RefusedError with Closed. Other errors (a write timeout on a live connection, a connection
// lost before the SUBSCRIBE went out, a missing SUBACK) are plain ones and say nothing of the
// broker's will.
func subscribe(ctx context.Context, client mqtt.Client, filters []string, qos byte) (subResult, error) {
	if len(filters) == 0 {
		return subResult{granted: qos}, nil
	}
	m := make(map[string]byte, len(filters))
	for _, f := range filters {
		m[f] = qos
	}
	tok := client.SubscribeMultiple(m, nil)
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !waitToken(tctx, tok) {
		if ctx.Err() != nil {
			return subResult{}, fmt.Errorf("subscribe: %w", ctx.Err())
		}
		return subResult{}, fmt.Errorf("subscribe: no SUBACK within 30s")
	}
	if err := tok.Error(); err != nil {
		if !client.IsConnectionOpen() && !errors.Is(err, mqtt.ErrNotConnected) {
			return subResult{}, &RefusedError{Closed: true, Err: err}
		}
		return subResult{}, fmt.Errorf("subscribe: %w", err)
	}
	res := subResult{granted: qos}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code == 0x80 {
				res.refused = append(res.refused, f)
				continue
			}
			res.granted = min(res.granted, code)
		}
	}
	slices.Sort(res.refused)
	if len(res.refused) == len(filters) {
		return subResult{}, &RefusedError{Filters: res.refused}
	}
	return res, nil
}
