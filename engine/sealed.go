package engine

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/cmx-agent/cmx-agent/apply"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/sealed"
	"github.com/cmx-agent/cmx-agent/store"
)

// SealedRefusals counts the configurations refused for their sealed values since the agent
// started, by kind (every kind present, zeros included).
func (e *Engine) SealedRefusals() map[sealed.Kind]uint64 { return e.sealedRefusals.snapshot() }

// checkSealed checks body's sealed values without decrypting them: their count (0: none), or the
// refusal of a malformed one, or of an output others may read, with its kind.
func checkSealed(cfg config.Endpoint, body []byte) (int, *Result, sealed.Kind) {
	n, err := sealed.Count(body)
	if err != nil {
		return 0, &Result{Status: err.Error(), Code: store.CodeInvalid}, kindOf(err)
	}
	if n > 0 && fs.FileMode(cfg.Mode)&0o004 != 0 {
		return n, &Result{Status: fmt.Sprintf("sealed values: the output's mode %04o lets others read it; "+
			"an output holding decrypted values needs a mode without o+r (e.g. mode = \"0640\")", fs.FileMode(cfg.Mode)), Code: store.CodeInvalid}, sealed.KindMode
	}
	return n, nil, ""
}

// kindOf is the kind of a sealed refusal err.
func kindOf(err error) sealed.Kind {
	if se := (*sealed.Error)(nil); errors.As(err, &se) {
		return se.Kind
	}
	return ""
}

// render makes the output's bytes from a configuration body: its sealed values opened, then the
// endpoint's template applied. The result may hold secrets: it goes to the output file only. A
// refusal for the sealed values says its kind.
func (e *Engine) render(cfg config.Endpoint, body []byte) ([]byte, *Result, sealed.Kind) {
	n, r, kind := checkSealed(cfg, body)
	if r != nil {
		return nil, r, kind
	}
	return e.renderChecked(cfg, body, n)
}

// renderChecked is render for a body checkSealed has accepted with n sealed values: the pipeline
// checks a body once, before it decides anything, and does not walk it again here.
func (e *Engine) renderChecked(cfg config.Endpoint, body []byte, n int) ([]byte, *Result, sealed.Kind) {
	data, err := e.identity.OpenCounted(body, n)
	if err != nil {
		return nil, &Result{Status: err.Error(), Code: store.CodeInvalid}, kindOf(err)
	}
	if cfg.Template == "" {
		return data, nil, ""
	}
	out, err := apply.Render(cfg.Template, data)
	if err != nil {
		return nil, &Result{Status: "rejected by template: " + err.Error(), Code: store.CodeRejected}, ""
	}
	return out, nil, ""
}

// appliedOutput returns the output's bytes as last applied for endpoint key (have false: none
// stored): the stored bytes, or, for a sealed configuration, the output rendered again from it
// with cfg.
func (e *Engine) appliedOutput(key string, cfg config.Endpoint) (out []byte, have bool, err error) {
	var isSealed bool
	err = e.store.View(func(tx *store.Tx) error {
		out, have, err = tx.Body(key)
		isSealed = tx.BodySealed(key)
		return err
	})
	if err != nil || !have || !isSealed {
		return out, have, err
	}
	out, r, _ := e.render(cfg, out)
	if r != nil {
		return nil, true, fmt.Errorf("render the sealed configuration again: %s", r.Status)
	}
	return out, true, nil
}
