package engine

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cmx-agent/cmx-agent/store"
)

// EndpointStatus is one endpoint's state as the local API shows it.
type EndpointStatus struct {
	Key       string    `json:"key"` // token, or token/name for a named configuration
	Token     string    `json:"token"`
	Name      string    `json:"name,omitempty"`
	Output    string    `json:"output"`
	AppliedID string    `json:"applied_id,omitempty"` // as people read it; "" = none, or applied without an id
	Applied   bool      `json:"applied"`              // a configuration has been applied
	AppliedAt time.Time `json:"applied_at,omitzero"`
	// AppliedHash is the hex sha256 of the output as last applied.
	AppliedHash string `json:"applied_hash,omitempty"`
	LastID      string `json:"last_id,omitempty"` // the last configuration handled, whatever its result
	LastOK      bool   `json:"last_ok"`
	// LastStatus is the status sent for the last configuration handled, and LastCode its code.
	LastStatus string    `json:"last_status,omitempty"`
	LastCode   int       `json:"last_code,omitempty"`
	LastAt     time.Time `json:"last_at,omitzero"`
	// Waiting reports a received configuration not yet applied.
	Waiting bool `json:"waiting"`
	// Pending counts answers stored but not yet acknowledged by the broker.
	Pending int `json:"pending"`
	// Damaged says why the endpoint's state record does not read ("" when it does).
	Damaged string `json:"damaged,omitempty"`
	// ApplyingSince is when the apply in progress started (zero when none runs), and ApplyingID
	// the configuration it applies: an apply that does not end shows here.
	ApplyingSince time.Time `json:"applying_since,omitzero"`
	ApplyingID    string    `json:"applying_id,omitempty"`
	// RequestWaitingSince is when the agent asked the server for the latest configuration and has
	// had no answer since (zero when answered, or offline): a server that does not answer shows
	// here, through the request's repeats.
	RequestWaitingSince time.Time `json:"request_waiting_since,omitzero"`
	// SignedVersion is the highest signed version accepted (0: none); RequireSigned says whether
	// unsigned configurations are refused (signed.go).
	SignedVersion int64 `json:"signed_version,omitempty"`
	RequireSigned bool  `json:"require_signed"`
}

// Endpoints reports every endpoint's state, sorted by key. It only reads the store.
func (e *Engine) Endpoints() ([]EndpointStatus, error) {
	eps := e.endpointList()
	pending := e.out.pendingByEndpoint()
	waits := requestWaits(eps)
	out := make([]EndpointStatus, 0, len(eps))
	err := e.store.View(func(tx *store.Tx) error {
		for i, ep := range eps {
			es := tx.StateOrRebuilt(ep.key)
			waiting, err := tx.HasPending(ep.key)
			if err != nil {
				return err
			}
			applyingID, since := ep.applying.get()
			acc, _ := tx.Accepted(ep.key) // a damaged record shows as none, as the machine takes it
			out = append(out, EndpointStatus{
				Key:         ep.key,
				Token:       ep.token,
				Name:        ep.name,
				Output:      ep.config().Output,
				AppliedID:   es.AppliedText,
				Applied:     es.AppliedHash != "",
				AppliedAt:   es.AppliedAt,
				AppliedHash: es.AppliedHash,
				LastID:      es.LastText,
				LastOK:      es.LastCode == store.CodeOK || es.LastCode == 0 && es.LastStatus == resultOK.Status,
				LastStatus:  es.LastStatus,
				LastCode:    int(es.LastCode),
				LastAt:      es.LastAt,
				Waiting:     waiting || ep.busy(),
				Pending:     pending[ep.key],
				Damaged:     es.Damaged,

				ApplyingSince: since,
				ApplyingID:    applyingID,

				RequestWaitingSince: waits[i],
				SignedVersion:       acc.Version,
				RequireSigned:       ep.config().RequireSigned,
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	return out, nil
}

// EndpointHistory is one endpoint's applied configurations, as the local API shows them.
type EndpointHistory struct {
	Key   string `json:"key"` // token, or token/name for a named configuration
	Token string `json:"token"`
	Name  string `json:"name,omitempty"`
	// Entries are the newest applied configurations, newest first (at most 32 are kept).
	Entries []HistoryEntry `json:"entries"`
	// Damaged says why the endpoint's history record does not read ("" when it does); the next
	// configuration applied starts it afresh.
	Damaged string `json:"damaged,omitempty"`
}

// History reports the applied configurations of the endpoint with key, or of every endpoint
// (sorted by key) when key is "". It only reads the store.
func (e *Engine) History(key string) ([]EndpointHistory, error) {
	eps := e.endpointList()
	if key != "" {
		i := slices.IndexFunc(eps, func(ep *endpoint) bool { return ep.key == key })
		if i < 0 {
			return nil, fmt.Errorf("%w %q (endpoints: %s)", ErrUnknownEndpoint, key, someKeys(eps))
		}
		eps = eps[i : i+1]
	}
	out := make([]EndpointHistory, 0, len(eps))
	err := e.store.View(func(tx *store.Tx) error {
		for _, ep := range eps {
			h := EndpointHistory{Key: ep.key, Token: ep.token, Name: ep.name, Entries: []HistoryEntry{}}
			ents, err := tx.History(ep.key)
			if err != nil {
				h.Damaged = "history record does not decode: " + errors.Unwrap(err).Error()
			} else if ents != nil {
				h.Entries = ents
			}
			out = append(out, h)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	return out, nil
}

// someKeys names the endpoints for an error message, the first maxNamedKeys of them.
func someKeys(eps []*endpoint) string {
	const maxNamedKeys = 10
	var keys []string
	for _, ep := range eps[:min(len(eps), maxNamedKeys)] {
		keys = append(keys, ep.key)
	}
	s := strings.Join(keys, ", ")
	if len(eps) > maxNamedKeys {
		s += fmt.Sprintf(" and %d more", len(eps)-maxNamedKeys)
	}
	return s
}

// requestWaits reads each endpoint's RequestWaitingSince. It is read before, not inside, a read
// transaction: a requester holds its lock while it hands out a message id, which may commit and
// grow the database, and bbolt's remap then waits for every read transaction to end.
func requestWaits(eps []*endpoint) []time.Time {
	waits := make([]time.Time, len(eps))
	for i, ep := range eps {
		waits[i] = ep.req.waitingSince(ep)
	}
	return waits
}

// ServerStates reports what the server last said about each endpoint besides configurations.
func (e *Engine) ServerStates() (map[string]ServerState, error) {
	out := map[string]ServerState{}
	err := e.store.View(func(tx *store.Tx) error {
		for _, ep := range e.endpointList() {
			st, err := tx.ServerState(ep.key)
			if err != nil {
				return err
			}
			out[ep.key] = st
		}
		return nil
	})
	return out, err
}

// StorePath is the database file.
func (e *Engine) StorePath() string { return e.store.Path() }
