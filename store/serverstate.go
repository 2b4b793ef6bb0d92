package store

import (
	"time"
)

// ServerState is kept at hot/e<ep>v (see store.go).
//
// ServerState is what the server last said about an endpoint besides configurations (7/CMP): that it
// has none assigned, or that it refused the request. It is kept apart from EndpointState so that
// recording it never races with an apply that rewrites EndpointState.
type ServerState struct {
	// NoneAssigned: the server answered configId "" with config null; the output stays as it is.
	NoneAssigned   bool      `json:"none_assigned,omitempty"`
	NoneAssignedAt time.Time `json:"none_assigned_at,omitzero"`
	// ErrorCode and ErrorReason are the last error response, cleared by the next configuration
	// response; the request is repeated with backoff meanwhile.
	ErrorCode   int       `json:"error_code,omitempty"`
	ErrorReason string    `json:"error_reason,omitempty"`
	ErrorAt     time.Time `json:"error_at,omitzero"`
	Errors      int       `json:"errors,omitempty"` // error responses in a row
}

// ServerState returns an endpoint's ServerState; the zero value when the server said nothing yet.
func (t *Tx) ServerState(ep string) (ServerState, error) {
	var st ServerState
	_, err := getJSON(t.hot(), epKey(ep, kindServer), &st)
	return st, err
}

// SetServerState stores an endpoint's ServerState.
func (t *Tx) SetServerState(ep string, st ServerState) error {
	return putJSON(t.hot(), epKey(ep, kindServer), st)
}
