package store

// keyIdentity marks that the agent made its identity for this database (hot/m\x00identity). A
// database without it is new, or from a version before sealed values: the identity may be made.
// One with it had an identity, to which configurations may have been sealed: a missing file is then
// an error, never a reason to make a new key.
var keyIdentity = []byte("m\x00identity")

// HasIdentity reports whether an identity was made for this database.
func (t *Tx) HasIdentity() bool { return t.hot().Get(keyIdentity) != nil }

// SetIdentity records that an identity exists for this database.
func (t *Tx) SetIdentity() error { return t.hot().Put(keyIdentity, []byte{1}) }
