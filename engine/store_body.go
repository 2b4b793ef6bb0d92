package engine

import "fmt"

// Copies kept for rollback and drift repair, per endpoint (see store.go for the rest of the layout):
//
//	endpoints/<ep>/body   the bytes of the output as last applied (what rollback and repair put back)
//	endpoints/<ep>/prior  priorFile: what was at the output before the agent first wrote it
var (
	keyBody  = []byte("body")
	keyPrior = []byte("prior")
)

// priorFile is the output as the agent found it before its first write, so that a failing hook on
// the very first configuration puts back the operator's own file (or removes the output when there
// was none).
type priorFile struct {
	Exists bool   `json:"exists"`
	Body   []byte `json:"body,omitempty"`
}

// Body returns the applied output bytes of an endpoint; ok false when none is stored.
func (t *Tx) Body(ep string) (body []byte, ok bool, err error) {
	b, err := t.endpoint(ep, false)
	if err != nil || b == nil {
		return nil, false, err
	}
	v := b.Get(keyBody)
	if v == nil {
		return nil, false, nil
	}
	return append([]byte{}, v...), true, nil
}

// SetBody stores the applied output bytes of an endpoint, in the transaction that records the
// applied hash, so the two never disagree. body must not change until the transaction ends.
func (t *Tx) SetBody(ep string, body []byte) error {
	b, err := t.endpoint(ep, true)
	if err != nil {
		return err
	}
	// No copy: bbolt holds on to the slice only until the commit, and the caller hands it over.
	if err := b.Put(keyBody, body); err != nil {
		return fmt.Errorf("endpoint %s body: %w", ep, err)
	}
	return nil
}

// Prior returns what was at the output before the agent first wrote it; ok false when not recorded.
func (t *Tx) Prior(ep string) (p priorFile, ok bool, err error) {
	b, err := t.endpoint(ep, false)
	if err != nil {
		return p, false, err
	}
	ok, err = getJSON(b, keyPrior, &p)
	return p, ok, err
}

// SetPrior records what was at the output before the agent first wrote it.
func (t *Tx) SetPrior(ep string, p priorFile) error {
	b, err := t.endpoint(ep, true)
	if err != nil {
		return err
	}
	return putJSON(b, keyPrior, p)
}

// keyRaw holds the configuration as received when a template made the output differ from it:
// endpoints/<ep>/raw. Without a template the body is the configuration, and nothing is stored twice.
var keyRaw = []byte("raw")

// Raw returns the applied configuration as received; ok false when none is stored.
func (t *Tx) Raw(ep string) (raw []byte, ok bool, err error) {
	b, err := t.endpoint(ep, false)
	if err != nil || b == nil {
		return nil, false, err
	}
	if v := b.Get(keyRaw); v != nil {
		return append([]byte{}, v...), true, nil
	}
	return t.Body(ep)
}

// SetApplied stores what an apply put in place: the output bytes and, when they differ, the
// configuration they were rendered from. Neither slice may change until the transaction ends.
func (t *Tx) SetApplied(ep string, body, raw []byte, rendered bool) error {
	if err := t.SetBody(ep, body); err != nil {
		return err
	}
	b, err := t.endpoint(ep, true)
	if err != nil {
		return err
	}
	if !rendered {
		return b.Delete(keyRaw)
	}
	if err := b.Put(keyRaw, raw); err != nil {
		return fmt.Errorf("endpoint %s configuration: %w", ep, err)
	}
	return nil
}
