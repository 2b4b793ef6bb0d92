// Package trust verifies signed configurations: JWS envelopes (RFC 7515) signed with Ed25519
// (EdDSA, RFC 8037) by a key the gateway trusts, whose payload binds a configuration body to an
// endpoint's token and name, a version and an optional expiry (CONTRACT section 6).
//
// It uses only the standard library: the agent runs on small gateways and its binary size is
// budgeted, and the subset of JOSE needed here (one algorithm, one key type) is small enough to
// read in full. Interoperability with a maintained JOSE library is covered by the tests.
package trust

import "fmt"

// Reason names the rule a refusal broke. It is the label of the agent's refusal counter, so the
// set is small and fixed.
type Reason string

// The reasons of a refusal.
const (
	ReasonMalformed Reason = "malformed" // not a JWS in the JSON serializations
	ReasonTooLarge  Reason = "too_large" // over the size limit
	ReasonAlgorithm Reason = "algorithm" // alg other than EdDSA, none included
	ReasonCritical  Reason = "critical"  // a crit header this verifier does not understand
	ReasonPayload   Reason = "payload"   // the payload is not the object the contract describes
	ReasonUntrusted Reason = "untrusted" // no trusted key made the signature
	ReasonBinding   Reason = "binding"   // for another token or name
	ReasonExpired   Reason = "expired"   // past its expires
	ReasonRollback  Reason = "rollback"  // older than the highest accepted version, or the same version with another body
	ReasonUnsigned  Reason = "unsigned"  // an unsigned configuration where signatures are required
)

// Reasons lists every Reason, for metrics that show a zero for each.
func Reasons() []Reason {
	return []Reason{ReasonMalformed, ReasonTooLarge, ReasonAlgorithm, ReasonCritical, ReasonPayload,
		ReasonUntrusted, ReasonBinding, ReasonExpired, ReasonRollback, ReasonUnsigned}
}

// Error is a refusal. Its message starts with "signature: " and says which rule, with the key id
// or the versions where they help; it never holds key material.
type Error struct {
	Reason Reason
	Detail string
}

// Error returns the refusal as the contract words it, e.g. "signature: expired".
func (e *Error) Error() string { return "signature: " + e.Detail }

func refuse(reason Reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Unsigned is the refusal of an unsigned configuration by an endpoint that requires signatures.
func Unsigned() *Error { return refuse(ReasonUnsigned, "unsigned but required") }

// CheckVersion applies anti-rollback: version must not be lower than highest, the highest version
// the endpoint has accepted (0 when none). At the same version the body must be the one accepted
// then (sameBody): the result is then unchanged, which the caller answers ok without writing.
func CheckVersion(version, highest int64, sameBody bool) (unchanged bool, err error) {
	switch {
	case version < highest:
		return false, refuse(ReasonRollback, "version %d older than %d", version, highest)
	case version == highest && !sameBody:
		return false, refuse(ReasonRollback, "version %d already accepted with another config", version)
	case version == highest:
		return true, nil
	}
	return false, nil
}
