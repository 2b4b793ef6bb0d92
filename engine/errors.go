package engine

import "errors"

// The engine's errors: what a receipt is released with when a message is not acknowledged, and
// what a caller may test for with errors.Is.
var (
	errNotStored    = errors.New("could not be stored")
	errEndpointGone = errors.New("the endpoint stopped before this was applied")
	// errAfterFailure refuses what arrives on a connection after a message that could not be
	// stored: the broker sends it again, after that one, on the next connection.
	errAfterFailure = errors.New("an earlier message on this connection could not be stored")
)

// ErrUnknownEndpoint is returned by History for a key no endpoint has.
var ErrUnknownEndpoint = errors.New("no endpoint")
