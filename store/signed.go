package store

import (
	"fmt"
	"time"
)

// kindAccepted is hot's key kind of an endpoint's Accepted record:
//
//	hot/e<ep>n   Accepted (JSON): the highest signed version accepted
//
// It lives apart from the state record, which a damaged read rebuilds without it.
const kindAccepted = 'n'

// Signed marks an offer whose body came out of a verified signed configuration: what
// anti-rollback compares and, once the offer is accepted, records.
type Signed struct {
	Version int64  `json:"version"`
	Hash    string `json:"hash"` // hex sha256 of the payload's config: the offer's body
	KID     string `json:"kid"`  // thumbprint of the key that signed it
}

// Accepted is the highest signed configuration an endpoint has accepted (anti-rollback, CONTRACT
// section 6). Version 0: none.
type Accepted struct {
	Version int64     `json:"version"`
	Hash    string    `json:"hash"` // hex sha256 of its config, to tell the same version sent again from another
	KID     string    `json:"kid,omitempty"`
	At      time.Time `json:"at,omitzero"`
}

// Accepted returns ep's record; the zero value when none was accepted.
func (t *Tx) Accepted(ep string) (Accepted, error) {
	var a Accepted
	if _, err := getJSON(t.hot(), epKey(ep, kindAccepted), &a); err != nil {
		return Accepted{}, fmt.Errorf("endpoint %s accepted version: %w", ep, err)
	}
	return a, nil
}

// SetAccepted stores ep's record.
func (t *Tx) SetAccepted(ep string, a Accepted) error {
	if err := putJSON(t.hot(), epKey(ep, kindAccepted), a); err != nil {
		return fmt.Errorf("endpoint %s accepted version: %w", ep, err)
	}
	return nil
}
