package transport

import "time"

// ConnState is the agent's broker connection as status shows it. It never holds a secret: server
// URLs are redacted and causes name files, not their contents.
type ConnState struct {
	Connected bool
	// Server is the broker of the live connection, or the one tried last.
	Server string
	// LastError is the plain-words cause of the last failed connection attempt ("" once connected),
	// e.g. "not authorised: ..." or "server certificate does not match the server name: ...".
	LastError string
	// LastErrorAt is when that cause was first seen (wall clock, for people).
	LastErrorAt time.Time
	// Connects counts the connections made since the agent started; all but the first are
	// reconnections.
	Connects uint64
	// ConnectFailures counts the connection attempts that failed since the agent started, by
	// cause (one of FailureCauses; a cause never seen is absent).
	ConnectFailures map[string]uint64
	// QoS is, while Connected, the QoS the broker granted the subscriptions: 1, or 0 when it grants
	// no more or while it refuses this client id a QoS 1 subscription; in that case QoS1RetryAt is
	// when the session tries QoS 1 again (zero otherwise).
	QoS         byte
	QoS1RetryAt time.Time
	// RefusedFilters are, while Connected, the topic filters the broker refused (SUBACK 0x80)
	// while it granted the others: their endpoints receive nothing.
	RefusedFilters []string
}
