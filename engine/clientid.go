package engine

import "github.com/cmx-agent/cmx-agent/store"

// ClientID returns the MQTT client id kept in the database, storing derived there when none is:
// the gateway's identity stays the first one used, whatever later happens to its endpoint list.
func (e *Engine) ClientID(derived string) (string, error) {
	var id string
	err := e.store.Update(func(tx *store.Tx) error {
		if id = tx.ClientID(); id != "" {
			return nil
		}
		id = derived
		return tx.SetClientID(id)
	})
	return id, err
}
