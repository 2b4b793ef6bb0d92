package engine

// NewReceiptForTest and ReleaseForTest let a transport's tests stand in for the engine.
func NewReceiptForTest() *Receipt { return newReceipt() }

// ReleaseForTest releases r as the engine would once its message's fate is committed.
func ReleaseForTest(r *Receipt, err error) { r.release(err) }
