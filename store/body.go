package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
)

const kindSealed = 'z'

// Hash is the hex sha256 the records hold of a body (EndpointState.AppliedHash and AppliedSealed,
// HistoryEntry.SHA256, Signed.Hash).
func Hash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Copies kept for rollback and drift repair, per endpoint (see store.go for the rest of the layout):
//
//	hot/e<ep>b   the bytes of the output as last applied (what rollback and repair put back)
//	hot/e<ep>r   the configuration as received, when a template made the output differ from it
//	hot/e<ep>z   set when e<ep>b is the configuration as received with its values still sealed,
//	             rather than the output (which holds decrypted values, which the database never
//	             does): drift repair and rollback render the output again from it
//	cold/<ep>f   PriorFile: what was at the output before the agent first wrote it (written once,
//	             so it stays out of the pages a push rewrites)

// PriorFile is the output as the agent found it before its first write, so that a failing hook on
// the very first configuration puts back the operator's own file (or removes the output when there
// was none).
type PriorFile struct {
	Exists bool   `json:"exists"`
	Body   []byte `json:"body,omitempty"`
	// Attr is the file's own mode and owner, which it gets back with its bytes: an app's 0600 file
	// must not come back readable by everyone. Records of earlier versions have none; the
	// endpoint's mode and owner are used for them, as they were then.
	Attr *FileAttr `json:"attr,omitempty"`
}

// FileAttr is a file's mode and owner as apply sets them.
type FileAttr struct {
	Mode fs.FileMode `json:"mode"` // permission bits with setuid, setgid and sticky, as io/fs has them
	UID  int         `json:"uid"`
	GID  int         `json:"gid"`
}

func priorKey(ep string) []byte { return append(epPrefix(ep), kindPrior) }

// Body returns the applied output bytes of an endpoint; ok false when none is stored.
func (t *Tx) Body(ep string) (body []byte, ok bool, err error) {
	v := t.hot().Get(epKey(ep, kindBody))
	if v == nil {
		return nil, false, nil
	}
	return append([]byte{}, v...), true, nil
}

// HasBody reports whether applied output bytes are stored for an endpoint, without copying them.
func (t *Tx) HasBody(ep string) bool { return t.hot().Get(epKey(ep, kindBody)) != nil }

// BodyLen returns the length of the applied output bytes stored for an endpoint, without copying
// them; ok false when none are stored.
func (t *Tx) BodyLen(ep string) (n int, ok bool) {
	v := t.hot().Get(epKey(ep, kindBody))
	return len(v), v != nil
}

// SetBody stores the applied output bytes of an endpoint, in the transaction that records the
// applied hash, so the two never disagree. body must not change until the transaction ends.
func (t *Tx) SetBody(ep string, body []byte) error {
	if body == nil {
		body = []byte{} // a nil value would read back as "none stored"
	}
	// No copy: bbolt holds on to the slice only until the commit, and the caller hands it over.
	if err := t.hot().Put(epKey(ep, kindBody), body); err != nil {
		return fmt.Errorf("endpoint %s body: %w", ep, err)
	}
	return nil
}

// Prior returns what was at the output before the agent first wrote it; ok false when not recorded.
func (t *Tx) Prior(ep string) (p PriorFile, ok bool, err error) {
	ok, err = getJSON(t.tx.Bucket(bucketCold), priorKey(ep), &p)
	return p, ok, err
}

// SetPrior records what was at the output before the agent first wrote it.
func (t *Tx) SetPrior(ep string, p PriorFile) error {
	return putJSON(t.tx.Bucket(bucketCold), priorKey(ep), p)
}

// DeletePrior forgets what was at the output before the agent first wrote it: the output holds it
// again (or what someone else wrote since), and the next attempt reads it afresh.
func (t *Tx) DeletePrior(ep string) error {
	if err := t.tx.Bucket(bucketCold).Delete(priorKey(ep)); err != nil {
		return fmt.Errorf("endpoint %s prior file: %w", ep, err)
	}
	return nil
}

// Raw returns the applied configuration as received; ok false when none is stored.
func (t *Tx) Raw(ep string) (raw []byte, ok bool, err error) {
	if v := t.hot().Get(epKey(ep, kindRaw)); v != nil {
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
	b := t.hot()
	if !rendered {
		return b.Delete(epKey(ep, kindRaw)) // no page is dirtied when there is none
	}
	if raw == nil {
		raw = []byte{}
	}
	if err := b.Put(epKey(ep, kindRaw), raw); err != nil {
		return fmt.Errorf("endpoint %s configuration: %w", ep, err)
	}
	return nil
}

// BodySealed reports whether the endpoint's stored applied bytes are a sealed configuration to
// render again rather than the output's bytes.
func (t *Tx) BodySealed(ep string) bool { return t.hot().Get(epKey(ep, kindSealed)) != nil }

// SetBodySealed records whether the endpoint's stored applied bytes are a sealed configuration.
func (t *Tx) SetBodySealed(ep string, on bool) error {
	if !on {
		return t.hot().Delete(epKey(ep, kindSealed))
	}
	return t.hot().Put(epKey(ep, kindSealed), []byte{1})
}
