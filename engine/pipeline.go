package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/cmx-agent/cmx-agent/apply"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/store"
)

// outcome is what the apply pipeline did with one offer.
type outcome struct {
	r Result
	// applied: the output holds body and the state must record it as the offer's (hash, shape and
	// body; the configuration as received too when a template rendered it).
	applied  bool
	hash     string
	shape    string
	body     []byte
	rendered bool
	// sealed: body is the configuration as received, whose sealed values the output holds
	// decrypted; sealedHash is its hash, which decides "unchanged" for it.
	sealed     bool
	sealedHash string
	output     string
	// unchanged: the output held body already; nothing was written or run.
	unchanged bool
	// abandoned: the agent is stopping and the pipeline was cut short; nothing may be committed, the
	// offer stays pending and is applied again from the start after the restart.
	abandoned bool
	// dropPrior: the output holds again the file found there, recorded by this very attempt (it
	// wrote nothing, or rolled back): the record goes with the result, so that the next attempt
	// reads what is there then, a file the app may have written since, not this older copy. A
	// record an earlier attempt left (a crash after its rename: the output may hold the agent's
	// bytes) is kept.
	dropPrior bool
}

// previous is what a rollback puts back.
type previous struct {
	exists bool
	body   []byte
	attr   *store.FileAttr // the found file's own mode and owner; nil: the endpoint's
	text   string          // the id people read; "" for a file the agent did not write or a push without id
	ours   bool            // body is a configuration the agent applied (not a file it found)
	// stored: body is the applied body in the database, read only when a rollback needs it (most
	// applies need none, and a configuration of a few MiB should not be copied for nothing). Only
	// the endpoint's result commit changes it, and that comes after the pipeline.
	stored bool
	// fresh: recorded by this attempt, from the file at the output now.
	fresh bool
}

func (p previous) name() string {
	switch {
	case !p.ours:
		return "the previous file"
	case p.text != "":
		return p.text
	}
	return "the previous configuration"
}

// runPipeline renders, validates, writes and hooks one offer with the endpoint's options cfg. The
// durable order, and why a crash at any point is safe, is in docs/durability.md:
//
//	render (template) → unchanged? → owner lookup → previous bytes kept → temporary file (synced) →
//	validate on it → rename (renamed) → owner → hook → on hook failure: previous bytes back, hook again
//
// Until the machine commits the outcome, the offer stays pending (in the database, or unacknowledged
// at the broker), so a crash anywhere here makes the agent run the whole pipeline again after the
// restart; that is why hooks must be idempotent.
func (e *Engine) runPipeline(ctx context.Context, ep *endpoint, cfg config.Endpoint, st store.EndpointState, o *store.Offer) outcome {
	start := e.opt.Clock.Now()
	defer func() { e.applyTimes.observe(e.opt.Clock.Now().Sub(start)) }()
	data, done, decided := e.candidate(cfg, st, o)
	if decided {
		return done
	}
	own, err := apply.LookupOwner(cfg.Owner, cfg.Group)
	if err != nil {
		return outcome{r: writeFailed(err)}
	}
	prev, err := e.previous(ep, cfg, st)
	if err != nil {
		return outcome{r: writeFailed(err)}
	}

	// What fails before the rename leaves the output as this attempt found it.
	untouched := func(r Result) outcome { return outcome{r: r, dropPrior: prev.fresh} }
	p, err := apply.Prepare(cfg.Output, data, apply.Options{
		Perm: fs.FileMode(cfg.Mode),
		Step: func(step string) {
			if step == apply.StepSynced {
				e.opt.Pause(StepSynced)
			}
		},
	})
	if err != nil {
		return untouched(writeFailed(err))
	}
	if err := e.validate(ctx, cfg, o, p); err != nil {
		p.Abort()
		if ctx.Err() != nil {
			return outcome{abandoned: true}
		}
		return untouched(validateFailed(err))
	}
	if err := p.Commit(); err != nil {
		if p.Renamed() {
			// The rename happened but the folder could not be synced: the new bytes are in place,
			// perhaps not durably. Put the previous ones back rather than report a half state.
			return e.rollback(ctx, ep, cfg, o, prev, own, false, "write failed: "+apply.Describe(err))
		}
		return untouched(writeFailed(err))
	}
	if err := own.Chown(cfg.Output); err != nil {
		return e.rollback(ctx, ep, cfg, o, prev, own, false, "write failed: "+apply.Describe(err))
	}
	e.opt.Pause(StepRenamed)

	if len(cfg.Hook) > 0 {
		if err := e.runProcess(ctx, e.command(cfg, o.Text, "hook", cfg.Hook)); err != nil {
			if ctx.Err() != nil {
				return outcome{abandoned: true}
			}
			e.log.Error("hook failed; rolling back", "endpoint", ep.key, "id", o.Text, "err", err)
			return e.rollback(ctx, ep, cfg, o, prev, own, true, "hook failed: "+err.Error())
		}
	}
	e.kickDriftFor(cfg.Output) // the first write may have created the output's folder: watch it now
	return done
}

// candidate decides what the offer makes of the output: the bytes to write and the outcome once
// they are in place, or, when decided is true, the outcome already (refused, or unchanged: nothing to
// write, validate or hook).
func (e *Engine) candidate(cfg config.Endpoint, st store.EndpointState, o *store.Offer) (data []byte, done outcome, decided bool) {
	nSealed, refused, kind := checkSealed(cfg, o.Body)
	if refused != nil {
		e.sealedRefusals.count(kind)
		return nil, outcome{r: *refused}, true
	}
	shape := shapeOf(cfg)
	var sealedHash string
	if nSealed > 0 {
		// Decided on the configuration as received: the same sealed one again is neither decrypted
		// nor written; a new encryption of the same secret is a new configuration.
		sealedHash = store.Hash(o.Body)
		if sealedHash == st.AppliedSealed && shape == st.AppliedShape {
			return nil, outcome{r: resultOK, applied: true, unchanged: true, hash: st.AppliedHash, sealedHash: sealedHash,
				shape: shape, body: o.Body, sealed: true, output: cfg.Output}, true
		}
	}
	data, refused, kind = e.renderChecked(cfg, o.Body, nSealed)
	if refused != nil {
		e.sealedRefusals.count(kind)
		return nil, outcome{r: *refused}, true
	}
	hash := store.Hash(data)
	done = outcome{r: resultOK, applied: true, hash: hash, shape: shape, body: data, rendered: cfg.Template != "", output: cfg.Output}
	if nSealed > 0 {
		// The database keeps the sealed form; drift repair and rollback render it again.
		done.body, done.rendered, done.sealed, done.sealedHash = o.Body, false, true, sealedHash
	}
	// A state written before shapes were recorded has none: its bytes alone decide, as they did,
	// so an upgrade does not make every device reload.
	if nSealed == 0 && hash == st.AppliedHash && (shape == st.AppliedShape || st.AppliedShape == "") {
		// No write, no validate, no hook: a server that sends the same configuration again (after
		// every reconnect, for instance) must not make the device reload.
		done.unchanged = true // logged once committed, as an applied one is
		return nil, done, true
	}
	return data, done, false
}

// validate runs the endpoint's validate command, if any, on the candidate file.
func (e *Engine) validate(ctx context.Context, cfg config.Endpoint, o *store.Offer, p *apply.Pending) error {
	if len(cfg.Validate) == 0 {
		return nil
	}
	return e.runProcess(ctx, e.command(cfg, o.Text, "validate", cfg.Validate, "CMX_CANDIDATE="+p.Path()))
}

// validateFailed is the result of a validate command that did not pass.
func validateFailed(err error) Result {
	// A program that cannot even start is the gateway's fault, not the configuration's.
	if re := (*apply.RunError)(nil); errors.As(err, &re) && re.Err != nil {
		return Result{Status: "validate failed: " + err.Error(), Code: store.CodeFailed}
	}
	return Result{Status: "rejected by validate: " + err.Error(), Code: store.CodeRejected}
}

// shapeOf hashes the options besides the body that shape the output file: where it is, its mode and
// owner, and the template (its path and its content, so an edited template counts too).
func shapeOf(c config.Endpoint) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q %o %q %q %q\n", c.Output, c.Mode, c.Owner, c.Group, c.Template)
	if c.Template != "" {
		if b, err := os.ReadFile(c.Template); err == nil {
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func writeFailed(err error) Result {
	return Result{Status: "write failed: " + apply.Describe(err), Code: store.CodeFailed}
}

// command builds a validate or hook command for an endpoint with the contract's environment.
func (e *Engine) command(cfg config.Endpoint, configID, what string, argv []string, extra ...string) apply.Command {
	env := append([]string{
		"CMX_TOKEN=" + cfg.Token,
		"CMX_CONFIG_ID=" + configID,
		"CMX_OUTPUT=" + cfg.Output,
	}, extra...)
	return apply.Command{
		Argv:    argv,
		Env:     env,
		Timeout: hookTimeout(cfg),
		Log:     e.log.With("endpoint", cfg.Key(), "id", configID),
		What:    what,
		Clock:   e.opt.Clock,
	}
}

// runProcess runs a validate or hook command in one of the engine's process slots, which bound how
// many run at once across endpoints. Only processes take a slot: an endpoint without validate or
// hook never waits behind another's slow hook. A wait for a slot ends with ctx.
func (e *Engine) runProcess(ctx context.Context, c apply.Command) error {
	select {
	case e.procs <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting for a process slot: %w", ctx.Err())
	}
	defer func() { <-e.procs }()
	return apply.Run(ctx, c)
}

func hookTimeout(c config.Endpoint) time.Duration {
	if c.HookTimeout.Duration > 0 {
		return c.HookTimeout.Duration
	}
	return config.DefaultHookTimeout
}

// previous returns what a rollback of ep would put back: the body last applied, or, before the
// agent's first successful apply, the file it found at the output. That file is recorded durably
// before the first write, so a crash after the rename cannot make the new bytes look like the old.
func (e *Engine) previous(ep *endpoint, cfg config.Endpoint, st store.EndpointState) (previous, error) {
	var (
		p     previous
		found bool
	)
	err := e.store.View(func(tx *store.Tx) error {
		if tx.HasBody(ep.key) {
			p, found = previous{exists: true, stored: true, text: st.AppliedText, ours: true}, true
			return nil
		}
		pr, ok, err := tx.Prior(ep.key)
		if ok {
			p, found = previous{exists: pr.Exists, body: pr.Body, attr: pr.Attr}, true
		}
		return err
	})
	var notRegular *apply.NotRegularError
	switch {
	case err != nil || (found && p.ours):
		return p, err
	case found:
		// Recorded at an earlier attempt that wrote nothing (validate refused it): the output is
		// still not the agent's, and what is there now gets the same refusal as a first look.
		if _, err := apply.LstatRegular(cfg.Output); errors.As(err, &notRegular) {
			return p, fmt.Errorf("%w; left as it is", err)
		}
		return p, nil
	}
	// What is there is not trusted (docs/apply.md): never a link followed, nothing but a regular file
	// opened (a FIFO would block here for good), and no more kept in memory and in the database than
	// a configuration may be. Anything else is refused and left as it is, so nothing is lost.
	b, fi, err := apply.ReadRegular(cfg.Output, int64(e.agent.MaxPayload))
	var tooLarge *apply.TooLargeError
	switch {
	case err == nil:
		perm, own := apply.AttrOf(fi)
		p = previous{exists: true, body: b, attr: &store.FileAttr{Mode: perm, UID: own.UID, GID: own.GID}, fresh: true}
	case errors.Is(err, fs.ErrNotExist):
		p = previous{fresh: true}
	case errors.As(err, &notRegular):
		return p, fmt.Errorf("%w; left as it is", err)
	case errors.As(err, &tooLarge):
		return p, fmt.Errorf("%w (max_payload), too large to keep for a rollback; left as it is", err)
	default:
		return p, fmt.Errorf("read the file in place for rollback: %w", err)
	}
	err = e.store.Batch(func(tx *store.Tx) error {
		return tx.SetPrior(ep.key, store.PriorFile{Exists: p.exists, Body: p.body, Attr: p.attr})
	})
	return p, err
}

// rollback puts prev back after the new bytes went in place and something failed; with hookAgain
// the hook runs once more, for the restored bytes. status is what failed; the result adds what the
// rollback did.
func (e *Engine) rollback(ctx context.Context, ep *endpoint, cfg config.Endpoint, o *store.Offer, prev previous, own apply.Owner, hookAgain bool, status string) outcome {
	fail := func(s string) outcome { return outcome{r: Result{Status: s, Code: store.CodeFailed}} }
	// The output is as the attempt found it again.
	restored := func(s string) outcome {
		return outcome{r: Result{Status: s, Code: store.CodeFailed}, dropPrior: prev.fresh}
	}
	if !prev.exists {
		if err := apply.Remove(cfg.Output); err != nil {
			e.log.Error("cannot remove the output after a failure", "endpoint", ep.key, "err", err)
			return fail(status + "; removing the output failed: " + apply.Describe(err))
		}
		e.log.Warn("output removed: there was no previous file", "endpoint", ep.key, "id", o.Text)
		return restored(status + "; output removed (there was no previous file)")
	}
	if prev.stored {
		var err error
		if prev.body, _, err = e.appliedOutput(ep.key, cfg); err != nil {
			e.log.Error("rollback failed", "endpoint", ep.key, "err", err)
			return fail(status + "; rollback failed: cannot read the previous configuration: " + err.Error())
		}
	}
	perm := fs.FileMode(cfg.Mode)
	if prev.attr != nil {
		perm, own = prev.attr.Mode, apply.Owner{UID: prev.attr.UID, GID: prev.attr.GID}
	}
	err := apply.WriteFile(cfg.Output, prev.body, apply.Options{Perm: perm})
	if err == nil {
		err = own.ChownKeepingMode(cfg.Output, perm)
	}
	if err != nil {
		e.log.Error("rollback failed", "endpoint", ep.key, "err", err)
		return fail(status + "; rollback failed: " + apply.Describe(err))
	}
	e.log.Warn("rolled back", "endpoint", ep.key, "id", o.Text, "to", prev.name())
	status += "; rolled back to " + prev.name()
	if hookAgain {
		if err := e.runProcess(ctx, e.command(cfg, prev.text, "hook", cfg.Hook)); err != nil {
			if ctx.Err() != nil {
				return outcome{abandoned: true}
			}
			e.log.Error("hook failed again after rollback", "endpoint", ep.key, "err", err)
			status += "; hook failed again after rollback: " + err.Error()
		}
	}
	return restored(status)
}
