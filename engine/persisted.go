package engine

import "github.com/cmx-agent/cmx-agent/store"

// The persisted types that are part of the engine's own API keep their names here; they are
// defined, and stored, in package store.
type (
	// OutMsg is a message in the outbox (Outbox.Next, Delivered, Ended, Waiting).
	OutMsg = store.OutMsg
	// ServerState is what the server last said about an endpoint besides configurations
	// (ServerStates).
	ServerState = store.ServerState
	// HistoryEntry is one applied configuration in an endpoint's history (EndpointHistory).
	HistoryEntry = store.HistoryEntry
)
