package main

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cmx-agent/cmx-agent/trust"
)

// signedLatency measures push → confirmation of signed pushes on the held path (no hook), with
// require_signed, against the floor, which verifies nothing: the verification and the larger
// envelope are the price, and the row shows it (issue 17: p50 within 1.3× of the floor).
func (r *runner) signedLatency(tok string) error {
	const app = "sig"
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		return err
	}
	pem, err := trust.EncodePublicKey(pub)
	if err != nil {
		return err
	}
	keyPath := filepath.Join(mkdir(r.dir, app), "bench.pub")
	if err := os.WriteFile(keyPath, pem, 0o644); err != nil {
		return err
	}
	r.extraTOML = fmt.Sprintf("[trust]\nkeys = [%q]\nrequire_signed = true\n", keyPath)
	a, _, err := r.startAgentWait(app, []string{tok}, "64KiB", false)
	r.extraTOML = ""
	if err != nil {
		return err
	}
	defer a.stop()
	return r.payloadLatency(a, app, tok, "signed", func(seq int) ([]byte, error) {
		return signedPush(priv, tok, seq)
	}, func(pushes, sample int) string {
		return fmt.Sprintf("%d signed pushes (held path, %d B with the envelope; the floor's %d B unsigned)", pushes, sample, pushBodyBytes)
	})
}

// payloadLatency measures push → confirmation of pushes whose payloads payload makes (the server's
// work: done before the clock starts) against the floor, and reports the ratio row "<what> push →
// confirmation p50" with the note describe gives for the number of pushes and a payload's size;
// a failure carries the tail of a's log.
func (r *runner) payloadLatency(a *agentProc, app, tok, what string, payload func(seq int) ([]byte, error), describe func(pushes, sample int) string) error {
	push := func() (time.Duration, error) {
		r.seq++
		p, err := payload(r.seq)
		if err != nil {
			return 0, err
		}
		return r.timedPush(app, tok, what, p)
	}
	agentLat, floorLat, err := r.againstFloor(tok, push)
	if err != nil {
		return fmt.Errorf("%s latency: %w\n%s", what, err, a.logTail())
	}
	sample, _ := payload(1)
	r.rep.ratio(what+" push → confirmation p50", "ms", ms(quantile(agentLat, .5)), ms(quantile(floorLat, .5)), targetP50, describe(len(agentLat), len(sample)))
	r.logf("%s latency p50 agent %.2f ms floor %.2f ms", what, ms(quantile(agentLat, .5)), ms(quantile(floorLat, .5)))
	return nil
}

// signedPush is pushBody's configuration signed for tok at version seq, as a push with id seq.
func signedPush(priv ed25519.PrivateKey, tok string, seq int) ([]byte, error) {
	var push struct {
		Entries json.RawMessage `json:"entries"`
	}
	if err := json.Unmarshal(pushBody(seq), &push); err != nil {
		return nil, err
	}
	env, err := trust.Sign(priv, trust.Payload{Token: tok, Version: int64(seq), Config: push.Entries})
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, `{"id":%d,"entries":[%s]}`, seq, env), nil
}

// appendFile appends text to the file at path.
func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
