package agent

import (
	"context"
	"net"
	"net/http"
	"runtime"

	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/metrics"
	"github.com/cmx-agent/cmx-agent/sealed"
	"github.com/cmx-agent/cmx-agent/transport"
	"github.com/cmx-agent/cmx-agent/trust"
)

// Build identifies the running binary in metrics.
type Build struct {
	Version string
	Commit  string
}

// The metric families, the agent's prefixed cmx_agent_, then the standard process_* and go_* ones.
// Per endpoint there are 10 series (info, last apply time, received, four results, drift repairs,
// damaged, apply running), so 1,000 endpoints make 10,000 series; the apply duration histogram is
// one for the whole agent (17 series), the connection failures 6 (one per cause), the process
// families 6 and the Go ones 19 (GC pauses: 5 quantiles, sum and count), and the rest are single
// series: signature refusals one per rule (10), sealed refusals one per kind (6), and the rest single
// ones (73 besides the endpoints' in all).
func (a *Agent) writeMetrics(w *metrics.Writer) error {
	st, err := a.eng.Stats()
	if err != nil {
		return err
	}
	c := a.Connection()
	now := a.clock.Now()
	l := func(name, value string) metrics.Label { return metrics.Label{Name: name, Value: value} }
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}

	w.Family("cmx_agent_build_info", "The running cmx-agent: version, commit and Go version.", "gauge")
	w.Sample("cmx_agent_build_info", 1, l("version", a.build.Version), l("commit", a.build.Commit), l("goversion", runtime.Version()))
	w.Family("cmx_agent_connected", "1 while the agent has a connection to the broker.", "gauge")
	w.Sample("cmx_agent_connected", b(c.Connected))
	w.Family("cmx_agent_subscription_degraded", "1 while connected with a subscription the broker did not wholly grant: topics refused, or QoS 0 only.", "gauge")
	w.Sample("cmx_agent_subscription_degraded", b(degraded(c) != ""))
	w.Family("cmx_agent_reconnects_total", "Connections to the broker made after the first since the agent started.", "counter")
	w.Sample("cmx_agent_reconnects_total", float64(max(c.Connects, 1)-1))
	w.Family("cmx_agent_connect_failures_total", "Connection attempts to the broker that failed since the agent started, by cause: refused (nothing listens), timeout, tls (handshake, certificates, or the TLS files), auth (credentials or client id refused, or the password file), dns, other.", "counter")
	for _, cause := range transport.FailureCauses() {
		w.Sample("cmx_agent_connect_failures_total", float64(c.ConnectFailures[cause]), l("cause", cause))
	}

	w.Family("cmx_agent_endpoint_applied_info", "The configuration applied at each endpoint (id as people read it; empty when none or without id).", "gauge")
	for _, e := range st.Endpoints {
		w.Sample("cmx_agent_endpoint_applied_info", b(e.Applied), l("endpoint", e.Key), l("id", e.AppliedID))
	}
	w.Family("cmx_agent_endpoint_last_apply_timestamp_seconds", "When the configuration in place was applied (Unix time; 0 when none).", "gauge")
	for _, e := range st.Endpoints {
		ts := 0.0
		if !e.AppliedAt.IsZero() {
			ts = float64(e.AppliedAt.UnixNano()) / 1e9
		}
		w.Sample("cmx_agent_endpoint_last_apply_timestamp_seconds", ts, l("endpoint", e.Key))
	}
	w.Family("cmx_agent_configurations_received_total", "Configurations received per endpoint (pushes, answers to requests).", "counter")
	for _, e := range st.Endpoints {
		w.Sample("cmx_agent_configurations_received_total", float64(e.Received), l("endpoint", e.Key))
	}
	w.Family("cmx_agent_configurations_total", "Configurations handled per endpoint by result: applied, superseded by a newer one, rejected (invalid, refused by template or validate), failed (write or hook).", "counter")
	for _, e := range st.Endpoints {
		for _, r := range []struct {
			name string
			n    uint64
		}{{"applied", e.Ok}, {"superseded", e.Superseded}, {"rejected", e.Rejected}, {"failed", e.Failed}} {
			w.Sample("cmx_agent_configurations_total", float64(r.n), l("endpoint", e.Key), l("result", r.name))
		}
	}
	w.Family("cmx_agent_drift_repairs_total", "Local edits of an output put back from the applied copy.", "counter")
	for _, e := range st.Endpoints {
		w.Sample("cmx_agent_drift_repairs_total", float64(e.DriftRepairs), l("endpoint", e.Key))
	}
	w.Family("cmx_agent_endpoint_damaged", "1 while the endpoint's state record in the database does not decode (status says why); the next configuration applied rewrites it.", "gauge")
	for _, e := range st.Endpoints {
		w.Sample("cmx_agent_endpoint_damaged", b(e.Damaged != ""), l("endpoint", e.Key))
	}
	w.Family("cmx_agent_endpoint_apply_running_seconds", "How long the apply in progress at each endpoint has been running (0 when none): one that keeps growing is stuck (a hook past its timeout, a stalled file system); status names it.", "gauge")
	for _, e := range st.Endpoints {
		running := 0.0
		if !e.ApplyingSince.IsZero() {
			running = now.Sub(e.ApplyingSince).Seconds()
		}
		w.Sample("cmx_agent_endpoint_apply_running_seconds", running, l("endpoint", e.Key))
	}
	w.Family("cmx_agent_held_acks_released_total", "Acknowledgements held for a quick apply and released at the hold bound with the apply still running (its configuration stored instead).", "counter")
	w.Sample("cmx_agent_held_acks_released_total", float64(st.HeldReleased))
	w.Family("cmx_agent_apply_duration_seconds", "Time from the start of an apply (render, write, validate, hook) to its outcome.", "histogram")
	h := st.ApplyDurations
	w.Histogram("cmx_agent_apply_duration_seconds", engine.ApplyBuckets, h.Cumulative, h.Sum, h.Count)
	w.Family("cmx_agent_outbox_messages", "Answers waiting for the broker's acknowledgement.", "gauge")
	w.Sample("cmx_agent_outbox_messages", float64(st.OutboxDepth))
	w.Family("cmx_agent_outbox_oldest_age_seconds", "Age of the oldest answer waiting for the broker's acknowledgement (0 when none).", "gauge")
	age := 0.0
	if !st.OutboxOldest.IsZero() {
		age = now.Sub(st.OutboxOldest).Seconds()
	}
	w.Sample("cmx_agent_outbox_oldest_age_seconds", age)
	w.Family("cmx_agent_outbox_set_aside_messages", "Answers set aside because the broker closed the connection at each of their publishes (an ACL refusing their topic): retried after 1 h, doubling to 24 h, or after a restart.", "gauge")
	w.Sample("cmx_agent_outbox_set_aside_messages", float64(st.OutboxSetAside))
	w.Family("cmx_agent_database_size_bytes", "Size of the state database file.", "gauge")
	w.Sample("cmx_agent_database_size_bytes", float64(st.DatabaseBytes))
	w.Family("cmx_agent_signature_refusals_total", "Configurations refused by signature checks, by rule: malformed, too_large, algorithm, critical, payload, untrusted, binding, expired, rollback, unsigned.", "counter")
	refusals := a.eng.SignatureRefusals()
	for _, r := range trust.Reasons() {
		w.Sample("cmx_agent_signature_refusals_total", float64(refusals[r]), l("reason", string(r)))
	}
	w.Family("cmx_agent_sealed_refusals_total", "Configurations refused for their sealed values, by kind: recipient (sealed to another gateway), damaged, plaintext (not JSON, or nested), malformed, body, mode (an output others may read).", "counter")
	sealedRefusals := a.eng.SealedRefusals()
	for _, k := range sealed.Kinds {
		w.Sample("cmx_agent_sealed_refusals_total", float64(sealedRefusals[k]), l("reason", string(k)))
	}
	if err := metrics.Process(w); err != nil {
		// The families that could be read are written; the scrape shows which are missing.
		a.log.Debug("process metrics incomplete", "err", err)
	}
	metrics.Go(w)
	return w.Flush()
}

func (a *Agent) metricsHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", metrics.ContentType)
	if err := a.writeMetrics(metrics.NewWriter(w)); err != nil {
		a.log.Warn("cannot serve metrics", "err", err)
	}
}

// serveMetrics serves GET /metrics on [agent] metrics_listen until ctx ends. A listener that cannot
// be opened is logged; the agent goes on without it.
func (a *Agent) serveMetrics(ctx context.Context, addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		a.log.Error("metrics listener unavailable", "listen", addr, "err", err)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", a.metricsHandler)
	a.log.Info("serving metrics", "listen", ln.Addr().String())
	a.setMetricsAddr(ln.Addr().String())
	if err := serveHTTP(ctx, ln, mux, a.metricsLimits, a.log.With("listen", addr)); err != nil {
		a.log.Error("metrics listener stopped", "listen", addr, "err", err)
	}
}
