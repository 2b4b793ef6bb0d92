package engine

import (
	"time"

	"github.com/cmx-agent/cmx-agent/store"
)

// What a server says about an endpoint besides configurations (7/CMP): that it has none for it, that
// the configuration is unchanged, or that it refused the request. The dialect reads it from a
// response (cmp7.go) as a serverNote; the endpoint's machine records it in the endpoint's
// store.ServerState, shown by status, and the requester (requests.go) repeats a refused request
// with backoff.

// noteKind is what a response says, configuration or not.
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
func (m *machine) noteServer(topic string, n serverNote) error {
	ep, e := m.ep, m.ep.e
	now := e.opt.Clock.Now()
	var old ServerState
	if err := e.store.View(func(tx *store.Tx) error {
		var err error
		old, err = tx.ServerState(ep.key)
		return err
	}); err != nil {
		return err
	}
	st := old
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
	// Only a change is written: an unchanged answer ({}) costs no commit. A note that comes with a
	// configuration is committed with it.
	if st != old {
		mark := len(m.j.ops)
		m.j.setServerState(st)
		if n.kind != noteConfig && n.kind != noteAnswered {
			if m.commitNow() == commitFailed {
				// Compared with the stored state, the note must not reach it with a later commit,
				// after what came since.
				m.j.truncate(mark)
				return errNotStored
			}
		}
	}

	switch n.kind {
	case noteError:
		args := []any{"endpoint", ep.key, "topic", topic, "status_code", n.code, "reason", n.reason, "errors_in_a_row", st.Errors}
		if n.malformed != "" {
			args = append(args, "malformed", n.malformed)
		}
		if latest := ep.asked.last(); n.rid != 0 && n.rid != latest {
			// An error for an older request: a newer one is already out.
			e.log.Warn("server refused an earlier configuration request", args...)
			return nil
		}
		if d, ok := ep.req.refuse(e, ep); ok {
			args = append(args, "retry_in", d.Round(time.Millisecond))
		}
		e.log.Warn("server refused the configuration request", args...)
	case noteNone:
		ep.req.reset()
		e.log.Info("server has no configuration for the endpoint; output left as it is", "endpoint", ep.key, "topic", topic)
	case noteUnchanged:
		ep.req.reset()
		e.log.Debug("configuration unchanged", "endpoint", ep.key, "topic", topic)
	default:
		ep.req.reset()
	}
	return nil
}
