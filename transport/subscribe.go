package transport

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
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
//	resume ──refused──▶ fresh ──refused──▶ QoS 0 ──probe due──▶ resume (probing)
//	  ▲                   │ subscribed        ▲                    │
//	  └───────────────────┘                   └─────refused────────┘
//
// The rungs:
//   - resume: the configured session (persistent unless clean_session), QoS 1. A SUBACK 0x80 is a
//     refusal; a connection closed before the SUBACK is one only the second time in a row, since a
//     network fault can end a connection at that moment too, and a fresh session throws away what
//     the broker had queued.
//   - fresh: a clean session once (what the broker kept for the old one is dropped), QoS 1; once
//     subscribed, the next connection resumes the new session.
//   - QoS 0: a clean session subscribed at QoS 0. Pushes arrive while connected (the broker
//     delivers at most once, and their confirmations go at QoS 0, as the protocol wants them at
//     the push's QoS); what is pushed while disconnected is not kept, and the pull at every
//     connect brings the newest configuration. After a probe delay (1 min, doubling per refused
//     probe up to 30 min, jittered) the session ends the connection and tries resume again; a
//     refused probe goes straight back to QoS 0. If even QoS 0 is refused (an ACL, not a missing
//     queue) the ladder starts again from resume, with the usual backoff between attempts.
//
// Another client id would get a QoS 1 session on a surviving node, but brokers key ACLs, session
// limits and bridges on the client id, so the agent never changes it on its own.
type ladder struct {
	persistent bool // the configuration wants a persistent session (clean_session false)
	step       rung
	closed     int  // SUBSCRIBEs of the resumed session answered by a closed connection, in a row
	probing    bool // this resume is a probe from QoS 0
	probes     int  // probes refused since QoS 0 began
}

type rung int

const (
	rungResume rung = iota
	rungFresh
	rungQoS0
)

// Probe delays of the QoS 0 rung.
const (
	ProbeMin = time.Minute
	ProbeMax = 30 * time.Minute
)

// clean reports whether the next connection asks for a clean session.
func (l *ladder) clean() bool { return !l.persistent || l.step != rungResume }

// qos is the QoS the next connection subscribes at.
func (l *ladder) qos() byte {
	if l.step == rungQoS0 {
		return 0
	}
	return 1
}

// refused moves the ladder after a refused SUBSCRIBE; closed says the refusal was a connection
// closed before the SUBACK. It returns a line for the log, "" when the refusal is retried as it is.
func (l *ladder) refused(closed bool) string {
	switch l.step {
	case rungResume:
		if l.probing {
			l.probing = false
			l.probes++
			l.step = rungQoS0
			return "the broker still refuses the QoS 1 subscription; staying at QoS 0"
		}
		if closed && l.closed == 0 {
			l.closed++
			return ""
		}
		l.closed = 0
		if l.persistent {
			l.step = rungFresh
			return "the broker refused the subscription of the resumed session; starting a fresh session (messages queued in the old one are lost; the latest configuration is requested)"
		}
		l.step = rungQoS0
		return "the broker refused the QoS 1 subscription; subscribing at QoS 0 (pushes made while disconnected are not kept; the latest configuration is requested at every connection)"
	case rungFresh:
		l.step = rungQoS0
		return "the broker refused the QoS 1 subscription of a fresh session too; subscribing at QoS 0 (pushes made while disconnected are not kept; the latest configuration is requested at every connection)"
	default:
		l.step, l.probes = rungResume, 0
		return "the broker refused the QoS 0 subscription too; starting over with the configured session"
	}
}

// subscribed moves the ladder after a granted SUBSCRIBE. It returns a line for the log, or "".
func (l *ladder) subscribed() string {
	l.closed = 0
	switch l.step {
	case rungFresh:
		l.step = rungResume
	case rungResume:
		if l.probing {
			l.probing, l.probes = false, 0
			return "the broker grants the QoS 1 subscription again"
		}
	}
	return ""
}

// probe moves a QoS 0 ladder to a probe of resume.
func (l *ladder) probe() {
	if l.step == rungQoS0 {
		l.step, l.probing = rungResume, true
	}
}

// probeDelay is how long a QoS 0 connection waits before its probe: ProbeMin doubled per refused
// probe, at most ProbeMax, drawn from [d/2, d] so that a fleet's probes spread out.
func (l *ladder) probeDelay(r *rand.Rand) time.Duration {
	d := ProbeMin
	for i := 0; i < l.probes && d < ProbeMax; i++ {
		d *= 2
	}
	d = min(d, ProbeMax)
	return d/2 + time.Duration(int64n(r, int64(d/2)+1))
}

// RefusedError is a SUBSCRIBE the broker refused: with a SUBACK failure code (0x80) for Filter, or
// by closing the connection before any SUBACK (Closed; Err is how paho ended the SUBSCRIBE).
type RefusedError struct {
	Filter string
	Closed bool
	Err    error
}

func (e *RefusedError) Error() string {
	if e.Closed {
		return fmt.Sprintf("subscribe: the broker closed the connection instead of answering (refused, or the session's queue is unavailable): %v", e.Err)
	}
	return fmt.Sprintf("subscribe %s: refused by the broker (not authorised, or the session's queue is unavailable)", e.Filter)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// subscribe subscribes filters at qos and waits for the SUBACK. Any error paho ends a SUBSCRIBE
// with is the connection's end (paho fails pending SUBSCRIBEs when it loses the connection), so
// it is reported as a RefusedError with Closed; a missing SUBACK is a plain error.
func subscribe(ctx context.Context, client mqtt.Client, filters []string, qos byte) error {
	if len(filters) == 0 {
		return nil
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
			return fmt.Errorf("subscribe: %w", ctx.Err())
		}
		return fmt.Errorf("subscribe: no SUBACK within 30s")
	}
	if err := tok.Error(); err != nil {
		return &RefusedError{Closed: true, Err: err}
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code == 0x80 {
				return &RefusedError{Filter: f}
			}
		}
	}
	return nil
}
