package main

import (
	"fmt"
	"path/filepath"

	"github.com/cmx-agent/cmx-agent/sealed"
)

// sealedLatency measures push → confirmation of pushes holding one sealed value on the held path
// (no hook), against the floor, which decrypts nothing: the X25519 decryption, the second pass
// over the body and the larger push are the price, and the row shows it beside the floor in the
// same run (issue 18).
func (r *runner) sealedLatency(tok string) error {
	const app = "seal"
	// Appended after the one [[endpoint]] table, so it is that endpoint's: an output holding
	// decrypted values must not be readable by others.
	r.extraTOML = "mode = \"0600\"\n"
	a, _, err := r.startAgentWait(app, []string{tok}, "64KiB", false)
	r.extraTOML = ""
	if err != nil {
		return err
	}
	defer a.stop()
	id, err := sealed.Read(filepath.Join(r.dir, app, "state", sealed.FileName))
	if err != nil {
		return err
	}
	return r.payloadLatency(a, app, tok, "sealed", func(seq int) ([]byte, error) {
		// Sealed anew for every push (a new encryption is a new configuration), before the clock
		// starts: the server seals, not the agent.
		return sealedPush(id.Recipient(), seq)
	}, func(pushes, sample int) string {
		return fmt.Sprintf("%d pushes with one sealed value (held path, %d B; the floor's %d B)", pushes, sample, pushBodyBytes)
	})
}

// sealedPush is a push with id seq whose one entry holds a password sealed to recipient.
func sealedPush(recipient string, seq int) ([]byte, error) {
	obj, err := sealed.Seal(recipient, fmt.Appendf(nil, `"bench-secret-%d"`, seq))
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, `{"id":%d,"entries":[{"seq":%d,"name":"bench","psk":%s}]}`, seq, seq, obj), nil
}
