package main

import (
	"fmt"
	"path/filepath"
	"time"

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
	push := func() (time.Duration, error) {
		r.seq++
		// Sealed anew for every push (a new encryption is a new configuration), before the clock
		// starts: the server seals, not the agent.
		payload, err := sealedPush(id.Recipient(), r.seq)
		if err != nil {
			return 0, err
		}
		return r.timedPush(app, tok, "sealed", payload)
	}
	agentLat, floorLat, err := r.againstFloor(tok, push)
	if err != nil {
		return fmt.Errorf("sealed latency: %w\n%s", err, a.logTail())
	}
	sample, _ := sealedPush(id.Recipient(), 1)
	note := fmt.Sprintf("%d pushes with one sealed value (held path, %d B; the floor's %d B)", len(agentLat), len(sample), pushBodyBytes)
	r.rep.ratio("sealed push → confirmation p50", "ms", ms(quantile(agentLat, .5)), ms(quantile(floorLat, .5)), targetP50, note)
	r.logf("sealed latency p50 agent %.2f ms floor %.2f ms", ms(quantile(agentLat, .5)), ms(quantile(floorLat, .5)))
	return nil
}

// sealedPush is a push with id seq whose one entry holds a password sealed to recipient.
func sealedPush(recipient string, seq int) ([]byte, error) {
	obj, err := sealed.Seal(recipient, fmt.Appendf(nil, `"bench-secret-%d"`, seq))
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, `{"id":%d,"entries":[{"seq":%d,"name":"bench","psk":%s}]}`, seq, seq, obj), nil
}
