package sealed

import (
	"bytes"
	"encoding/json"
	"fmt"

	"filippo.io/age"
	"filippo.io/age/armor"
)

// Seal encrypts the JSON value to recipient (age1...) and returns the {"$sealed": armor} object
// that stands for it in a configuration body, as age -r RECIPIENT -a would make it.
func Seal(recipient string, value []byte) ([]byte, error) {
	if !json.Valid(value) {
		return nil, fmt.Errorf("seal: the value is not JSON")
	}
	r, err := age.ParseX25519Recipient(recipient)
	if err != nil {
		return nil, fmt.Errorf("seal: recipient: %w", err)
	}
	var buf bytes.Buffer
	aw := armor.NewWriter(&buf)
	w, err := age.Encrypt(aw, r)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if _, err := w.Write(value); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if err := aw.Close(); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if buf.Len() > MaxArmor {
		return nil, fmt.Errorf("seal: the value's armor is %d bytes, more than the %d an agent opens", buf.Len(), MaxArmor)
	}
	return marshal(map[string]string{Key: buf.String()})
}
