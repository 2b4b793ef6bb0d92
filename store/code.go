package store

import (
	"strings"

	"github.com/cmx-agent/cmx-agent/cmx"
)

// Code is the outcome of handling a configuration, in the HTTP-like terms 7/CMP reports and both
// dialects store beside the status text, so that no status is ever parsed back.
type Code int

// The codes the agent gives.
const (
	CodeOK         Code = 200 // applied (or unchanged)
	CodeInvalid    Code = 400 // the payload was refused: not JSON, a field missing, too large
	CodeForbidden  Code = 403 // a signature refusal (CONTRACT section 6); the reason says which rule
	CodeSuperseded Code = 409 // replaced by a newer configuration before it was applied
	CodeRejected   Code = 422 // refused by the template or validate
	CodeFailed     Code = 500 // could not be applied: write failed, hook failed, timed out
)

// Transient reports whether the same configuration may succeed if it is tried again (a full disk,
// a hook that timed out), as opposed to a refusal that will not change.
func (c Code) Transient() bool { return c >= 500 }

// legacyCode gives a code to a handled id stored before codes were; it runs only on such old
// records.
func legacyCode(status string) Code {
	switch {
	case status == cmx.StatusOK:
		return CodeOK
	case strings.HasPrefix(status, "superseded"):
		return CodeSuperseded
	case strings.HasPrefix(status, "invalid"):
		return CodeInvalid
	case strings.HasPrefix(status, "validate"), strings.HasPrefix(status, "rejected"):
		return CodeRejected
	}
	return CodeFailed
}
