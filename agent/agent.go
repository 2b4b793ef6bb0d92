// Package agent is cmx-agent's daemon: it puts together the engine (endpoints, apply pipeline,
// store, outbox; package engine), the MQTT session that feeds it (package transport) and the local
// API, and carries out reloads across both.
//
// The order of durable steps for one configuration, and why a crash between any two of them loses
// nothing, is written down in docs/durability.md.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/internal/clock"
	"github.com/cmx-agent/cmx-agent/transport"
)

// Pause points: the durable steps of one configuration, in order (see engine.Step*).
const (
	StepReceived  = engine.StepReceived
	StepSynced    = engine.StepSynced
	StepRenamed   = engine.StepRenamed
	StepCommitted = engine.StepCommitted
	StepPublished = engine.StepPublished
)

// Options are the agent's collaborators: the engine's options (the logger, clock, pause points and
// OnChange serve the MQTT session too) and the build the metrics show. The zero value of each field
// is a sensible default.
type Options struct {
	engine.Options
	// Build is shown by the build info metric.
	Build Build
}

// ErrRestartNeeded is returned by Reload for a configuration that changes [broker], [kaa] or
// [agent]: those shape the connection, the topics and the database, so the caller restarts the
// agent with the new configuration (which reconnects) instead.
var ErrRestartNeeded = errors.New("restart needed")

// Agent is one running cmx-agent.
type Agent struct {
	log  *slog.Logger
	eng  *engine.Engine
	sess *transport.Session

	build    Build
	clock    clock.Clock // the engine's: what the metrics measure ages against
	reloadMu sync.Mutex  // one Reload at a time
	mu       sync.Mutex
	cfg      *config.Config
	runCtx   context.Context
	metrics  string // the address metrics are served on, once listening
	// What a client may hold of the API socket and of the metrics listener; tests shorten them.
	apiLimits, metricsLimits connLimits
}

// MetricsAddr is the TCP address metrics are served on; "" when none (yet).
func (a *Agent) MetricsAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.metrics
}

func (a *Agent) setMetricsAddr(s string) {
	a.mu.Lock()
	a.metrics = s
	a.mu.Unlock()
}

// New opens the state database and prepares the agent; it does not connect.
func New(cfg *config.Config, opt Options) (*Agent, error) {
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	log := boundLogger(opt.Logger)
	eopt := opt.Options
	eopt.Logger = log
	eng, err := engine.New(cfg, eopt)
	if err != nil {
		return nil, err
	}
	clientID := cfg.Broker.ClientID
	if clientID == "" && len(cfg.Endpoints) > 0 {
		if clientID, err = eng.ClientID(config.DefaultClientPrefix + cfg.Endpoints[0].Token); err != nil {
			eng.Close()
			return nil, fmt.Errorf("client id: %w", err)
		}
	}
	sess := transport.New(cfg.Broker, eng, transport.Options{
		Logger:     log,
		ClientID:   clientID,
		MaxPayload: int(cfg.Agent.MaxPayload),
		Pause:      opt.Pause,
		Clock:      opt.Clock,
		OnChange:   opt.OnChange,
	})
	c := *cfg
	return &Agent{log: log, eng: eng, sess: sess, cfg: &c, build: opt.Build, clock: clock.OrReal(opt.Clock),
		apiLimits: apiConnLimits(), metricsLimits: metricsConnLimits()}, nil
}

// Close releases the database. Call it after Run has returned.
func (a *Agent) Close() error { return a.eng.Close() }

// Run applies what a crash left pending, then connects and serves until ctx ends. It returns nil on
// a clean stop.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.mu.Lock()
	a.runCtx = ctx
	a.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(1)
	if ln, path, ok := a.listenAPI(); ok {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serveAPI(ctx, ln, path)
		}()
	}
	if addr := a.config().Agent.MetricsListen; addr != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serveMetrics(ctx, addr)
		}()
	}
	go func() {
		defer wg.Done()
		a.eng.Run(ctx)
	}()
	err := a.sess.Run(ctx)
	cancel()
	wg.Wait()
	return err
}

// Connection reports the broker connection; safe to call at any time from any goroutine.
func (a *Agent) Connection() transport.ConnState { return a.sess.State() }

// Reload switches to cfg without dropping the MQTT session: endpoints that are new are subscribed
// and asked for their configuration, removed ones stop after the apply in progress, and changed
// ones get their new options between applies (the stored configuration is applied again when its
// output, mode, owner, group or template changed). The files of removed endpoints and their stored
// state stay.
//
// A cfg that changes [broker], [kaa] or [agent] is not applied: Reload returns an error wrapping
// ErrRestartNeeded. Reload may be called before or during Run.
func (a *Agent) Reload(cfg *config.Config) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	a.mu.Lock()
	cur, ctx := a.cfg, a.runCtx
	a.mu.Unlock()
	var changed []string
	if !reflect.DeepEqual(cur.Broker, cfg.Broker) {
		changed = append(changed, "[broker]")
	}
	if cur.Kaa != cfg.Kaa {
		changed = append(changed, "[kaa]")
	}
	if cur.Agent != cfg.Agent {
		changed = append(changed, "[agent]")
	}
	if len(changed) > 0 {
		return fmt.Errorf("%v changed: %w", changed, ErrRestartNeeded)
	}
	a.eng.SetTrust(cfg.Trust.Loaded) // before the endpoints, which may now require signatures
	ch := a.eng.Reload(cfg.Endpoints)
	a.mu.Lock()
	c := *a.cfg
	c.Endpoints, c.Trust = cfg.Endpoints, cfg.Trust
	a.cfg = &c
	a.mu.Unlock()
	if ctx == nil {
		return nil
	}
	if err := a.sess.Apply(ctx, ch, a.eng.Request); err != nil {
		// The next connect subscribes every endpoint; a failure here is not lost for long.
		a.log.Warn("cannot subscribe new endpoints now", "err", err)
	}
	return nil
}

func (a *Agent) config() *config.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}
