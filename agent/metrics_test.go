package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
	"github.com/cmx-agent/cmx-agent/metrics"
)

// scrape fetches /metrics from the agent's socket and parses it with the Prometheus project's own
// parser.
func (h *harness) scrape() map[string]*dto.MetricFamily {
	h.t.Helper()
	// One connection per scrape, closed after it: a test that polls the metrics must not hold
	// idle connections up to the API's cap of open ones.
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", h.cfg.Agent.Socket)
	}}}
	resp, err := c.Get("http://cmx-agent/metrics")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		h.t.Errorf("Content-Type %q", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		h.t.Fatalf("metrics do not parse: %v", err)
	}
	return fams
}

// waitMetric scrapes /metrics until the sample of family with labels satisfies ok, and returns
// that scrape.
func (h *harness) waitMetric(family string, labels map[string]string, ok func(float64) bool) map[string]*dto.MetricFamily {
	h.t.Helper()
	var (
		fams map[string]*dto.MetricFamily
		v    float64
	)
	testkit.Eventually(h.t, waitFor, func() bool {
		fams = h.scrape()
		v = value(h.t, fams, family, labels)
		return ok(v)
	}, "%s %v never as wanted: last %s", family, labels, func() string { return fmt.Sprint(v) })
	return fams
}

// value returns the value of family's sample whose labels include want.
func value(t *testing.T, fams map[string]*dto.MetricFamily, family string, want map[string]string) float64 {
	t.Helper()
	f, ok := fams[family]
	if !ok {
		t.Fatalf("no family %s", family)
	}
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("%s has no sample with labels %v", family, want)
	return 0
}

func TestMetrics_ParseAndCarryEveryFamily(t *testing.T) {
	h := newHarness(t, "gw-001", "dev-2")
	h.start()
	h.pulled("gw-001")
	topic := h.prefix("gw-001") + "/json"
	h.server.Publish(t, topic, 1, []byte(`{"id":"cfg-1","entries":[1]}`))
	h.confirmed(topic + "/status")
	h.server.Publish(t, topic, 1, []byte(`{"id":"bad","entries":{}}`))
	h.confirmed(topic + "/status")
	// A confirmation may be published before its result is committed (the push is unacknowledged
	// until then); the counters follow the commit.
	fams := h.waitMetric("cmx_agent_configurations_total", map[string]string{"endpoint": "gw-001", "result": "applied"},
		func(v float64) bool { return v == 1 })
	for _, name := range []string{
		"cmx_agent_build_info", "cmx_agent_connected", "cmx_agent_subscription_degraded", "cmx_agent_reconnects_total",
		"cmx_agent_endpoint_applied_info", "cmx_agent_endpoint_last_apply_timestamp_seconds",
		"cmx_agent_configurations_received_total", "cmx_agent_configurations_total",
		"cmx_agent_drift_repairs_total", "cmx_agent_endpoint_damaged", "cmx_agent_apply_duration_seconds",
		"cmx_agent_endpoint_apply_running_seconds", "cmx_agent_held_acks_released_total", "cmx_agent_outbox_set_aside_messages",
		"cmx_agent_outbox_messages", "cmx_agent_outbox_oldest_age_seconds", "cmx_agent_database_size_bytes",
		"cmx_agent_connect_failures_total",
		"process_start_time_seconds", "process_cpu_seconds_total", "process_resident_memory_bytes",
		"process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
		"go_goroutines", "go_threads", "go_info", "go_memstats_alloc_bytes", "go_gc_duration_seconds",
		"cmx_agent_signature_refusals_total", "cmx_agent_sealed_refusals_total",
	} {
		if _, ok := fams[name]; !ok {
			t.Errorf("family %s missing", name)
		}
	}
	checks := []struct {
		family string
		labels map[string]string
		want   func(float64) bool
		says   string
	}{
		{"cmx_agent_connected", nil, func(v float64) bool { return v == 1 }, "1"},
		{"cmx_agent_subscription_degraded", nil, func(v float64) bool { return v == 0 }, "0"},
		{"cmx_agent_endpoint_applied_info", map[string]string{"endpoint": "gw-001", "id": "cfg-1"}, func(v float64) bool { return v == 1 }, "1"},
		{"cmx_agent_endpoint_applied_info", map[string]string{"endpoint": "dev-2", "id": ""}, func(v float64) bool { return v == 0 }, "0"},
		{"cmx_agent_configurations_received_total", map[string]string{"endpoint": "gw-001"}, func(v float64) bool { return v == 2 }, "2"},
		{"cmx_agent_configurations_total", map[string]string{"endpoint": "gw-001", "result": "applied"}, func(v float64) bool { return v == 1 }, "1"},
		{"cmx_agent_configurations_total", map[string]string{"endpoint": "gw-001", "result": "rejected"}, func(v float64) bool { return v == 1 }, "1"},
		{"cmx_agent_endpoint_last_apply_timestamp_seconds", map[string]string{"endpoint": "gw-001"}, func(v float64) bool { return v > 1e9 }, "a Unix time"},
		{"cmx_agent_apply_duration_seconds", nil, func(v float64) bool { return v == 1 }, "1 observation"},
		{"cmx_agent_database_size_bytes", nil, func(v float64) bool { return v > 0 }, "> 0"},
		{"cmx_agent_connect_failures_total", map[string]string{"cause": "refused"}, func(v float64) bool { return v == 0 }, "0"},
		{"process_open_fds", nil, func(v float64) bool { return v > 3 }, "> 3 (the database, the socket, the broker)"},
		{"process_resident_memory_bytes", nil, func(v float64) bool { return v > 1<<20 }, "> 1 MiB"},
		{"go_goroutines", nil, func(v float64) bool { return v > 1 }, "> 1"},
	}
	for _, c := range checks {
		if v := value(t, fams, c.family, c.labels); !c.want(v) {
			t.Errorf("%s%v = %v, want %s", c.family, c.labels, v, c.says)
		}
	}
	if n := len(fams["cmx_agent_configurations_total"].GetMetric()); n != 8 {
		t.Errorf("configurations_total has %d series for 2 endpoints, want 8", n)
	}
}

func TestMetrics_ServedOnTCPWhenConfigured(t *testing.T) {
	h := newHarness(t)
	h.cfg.Agent.MetricsListen = "127.0.0.1:0"
	h.start()
	h.pulled("gw-001")
	// The pull goes out once status says connected; the listener may come up a moment later.
	var addr string
	h.waitStatus(func(s Status) bool { addr = h.agent.MetricsAddr(); return s.Connected && addr != "" })
	resp, err := http.Get(fmt.Sprintf("http://%s/metrics", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if value(t, fams, "cmx_agent_connected", nil) != 1 {
		t.Errorf("not connected in metrics")
	}
}

func TestMetrics_SeriesAreBoundedByTheEndpointList(t *testing.T) {
	dir := t.TempDir()
	var sb strings.Builder
	sb.WriteString("[kaa]\napp_version = \"a\"\n[agent]\nstate_dir = \"state\"\nsocket = \"state/agent.sock\"\n")
	for i := range 1000 {
		fmt.Fprintf(&sb, "[[endpoint]]\ntoken = \"dev-%04d\"\noutput = \"out/%04d.json\"\n", i, i)
	}
	cfg, err := config.Parse(filepath.Join(dir, "agent.toml"), []byte(sb.String()))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var buf bytes.Buffer
	if err := a.writeMetrics(metrics.NewWriter(&buf)); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(&buf)
	if err != nil {
		t.Fatal(err)
	}
	series := 0
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			if h := m.GetHistogram(); h != nil {
				series += len(h.GetBucket()) + 2 // the buckets (+Inf among them), _sum and _count
				continue
			}
			if s := m.GetSummary(); s != nil {
				series += len(s.GetQuantile()) + 2
				continue
			}
			series++
		}
	}
	if series != 10*1000+73 {
		t.Errorf("%d series for 1,000 endpoints, want 10,073 (10 per endpoint and 73 besides)", series)
	}
}

// Every failed connection attempt is counted under its cause, whether or not the cause changed
// (the log says it once); the other causes stay at 0.
func TestMetrics_ConnectFailuresAreCountedByCause(t *testing.T) {
	closedPort := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		return "tcp://" + ln.Addr().String()
	}
	cases := []struct {
		name   string
		broker func(t *testing.T) (*mqtttest.Broker, string) // the broker and the [broker] table
		want   string
	}{
		{"nothing listening", func(t *testing.T) (*mqtttest.Broker, string) {
			return mqtttest.Start(t), fmt.Sprintf("servers = [%q]", closedPort(t))
		}, "refused"},
		{"plain port in a tls:// URL", func(t *testing.T) (*mqtttest.Broker, string) {
			b := mqtttest.Start(t)
			return b, fmt.Sprintf("servers = [%q]", strings.Replace(b.URL, "tcp://", "tls://", 1))
		}, "tls"},
		{"ca_file without a certificate", func(t *testing.T) (*mqtttest.Broker, string) {
			b := mqtttest.Start(t)
			ca := filepath.Join(t.TempDir(), "ca.pem")
			if err := os.WriteFile(ca, []byte("not a certificate\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			return b, fmt.Sprintf("servers = [%q]\nca_file = %q", strings.Replace(b.URL, "tcp://", "tls://", 1), ca)
		}, "tls"},
		{"wrong password", func(t *testing.T) (*mqtttest.Broker, string) {
			b, url := passwordBroker(t, "gw-001", testPassword)
			return b, fmt.Sprintf("servers = [%q]\nusername = \"gw-001\"\npassword_file = %q", url, writeSecret(t, "wrong", 0o600))
		}, "auth"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, brokerTOML := c.broker(t)
			h := newHarnessOn(t, b, brokerTOML)
			h.start()
			h.waitStatus(func(s Status) bool { return s.LastError != "" }) // the API is up
			// The first attempt goes at once, the second after the backoff's first step (≤ 1 s).
			fams := h.waitMetric("cmx_agent_connect_failures_total", map[string]string{"cause": c.want},
				func(v float64) bool { return v >= 2 })
			if n := len(fams["cmx_agent_connect_failures_total"].GetMetric()); n != 6 {
				t.Errorf("%d series of cmx_agent_connect_failures_total, want 6 (one per cause)", n)
			}
			for _, cause := range []string{"refused", "timeout", "tls", "auth", "dns", "other"} {
				v := value(t, fams, "cmx_agent_connect_failures_total", map[string]string{"cause": cause})
				switch {
				case cause == c.want && v < 2:
					t.Errorf("cmx_agent_connect_failures_total{cause=%q} = %v after two attempts, want ≥ 2", cause, v)
				case cause != c.want && v != 0:
					t.Errorf("cmx_agent_connect_failures_total{cause=%q} = %v, want 0 (every failure was %s)", cause, v, c.want)
				}
			}
			if v := value(t, fams, "cmx_agent_connected", nil); v != 0 {
				t.Errorf("cmx_agent_connected = %v, want 0", v)
			}
		})
	}
}

// A broker that grants the QoS 1 subscription at QoS 0 only (mosquitto's max_qos 0) leaves the
// agent connected but degraded: status says so and the gauge is 1.
func TestMetrics_DegradedAtAQoS0Grant(t *testing.T) {
	h := newHarnessBroker(t, mqtttest.Options{Lines: []string{"max_qos 0"}}, config.DialectCMX3,
		"[[endpoint]]\ntoken = \"gw-001\"\noutput = \"out/gw-001.json\"\n")
	h.start()
	st := h.waitStatus(func(s Status) bool { return s.Connected })
	if !strings.HasPrefix(st.Degraded, "subscribed at QoS 0: the broker grants no more") {
		t.Errorf("status degraded %q, want the QoS 0 grant named", st.Degraded)
	}
	fams := h.scrape()
	if v := value(t, fams, "cmx_agent_subscription_degraded", nil); v != 1 {
		t.Errorf("cmx_agent_subscription_degraded = %v, want 1", v)
	}
	if v := value(t, fams, "cmx_agent_connected", nil); v != 1 {
		t.Errorf("cmx_agent_connected = %v, want 1", v)
	}
}

// The API socket and the metrics listener hold a few connections at once and cut a client that
// sends nothing, or half a request, after a timeout: a local client cannot pin the agent's
// goroutines and memory. Over the cap a connection is closed at once, without an answer.
func TestLocalServers_CapConnectionsAndCutIdleAndSlowClients(t *testing.T) {
	const timeout = time.Second
	limits := connLimits{maxConns: 4, header: timeout, read: timeout, write: 5 * time.Second, idle: timeout, maxHeaderBytes: 4 << 10}
	cases := []struct {
		name string
		dial func(h *harness) (net.Conn, error)
	}{
		{"API socket", func(h *harness) (net.Conn, error) { return net.Dial("unix", h.cfg.Agent.Socket) }},
		{"metrics listener", func(h *harness) (net.Conn, error) { return net.Dial("tcp", h.agent.MetricsAddr()) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.cfg.Agent.MetricsListen = "127.0.0.1:0"
			h.connLimits = &limits
			h.start()
			h.waitListening()
			dial := func() net.Conn {
				t.Helper()
				conn, err := c.dial(h)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				return conn
			}
			const get = "GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n"

			idle := make([]net.Conn, limits.maxConns)
			for i := range idle {
				idle[i] = dial()
			}
			over := dial()
			over.Write([]byte(get + "\r\n")) // may fail: the agent may have closed it already
			if got, closed := readUntilClosed(over, 3*timeout); !closed || len(got) > 0 {
				t.Errorf("connection over the cap: read %.60q, closed %v; want it closed without an answer", got, closed)
			}
			h.waitLog("local connections closed: too many open at once", 1)
			if n := h.logs.Count("local connections closed: too many open at once"); n != 1 {
				t.Errorf("connection closed over the cap: %d warnings in the log, want one", n)
			}

			start := time.Now()
			for i, conn := range idle {
				if got, closed := readUntilClosed(conn, 3*timeout); !closed || len(got) > 0 {
					t.Fatalf("idle connection %d: read %q, closed %v; want it closed by the agent", i, got, closed)
				}
			}
			if d := time.Since(start); d > timeout+timeout/2 {
				t.Errorf("idle connections closed after %v, want within the timeout of %v", d, timeout)
			}

			fresh := dial()
			fresh.Write([]byte(get + "\r\n"))
			if got, _ := readUntilClosed(fresh, 5*time.Second); !strings.HasPrefix(string(got), "HTTP/1.1 200 OK") {
				t.Errorf("a fresh client once the idle ones are cut got %.40q, want 200 OK", got)
			}

			slow := dial()
			slow.Write([]byte(get)) // headers never finished
			start = time.Now()
			if got, closed := readUntilClosed(slow, 3*timeout); !closed || len(got) > 0 {
				t.Errorf("half a request: read %q, closed %v; want it closed by the agent", got, closed)
			}
			if d := time.Since(start); d > timeout+timeout/2 {
				t.Errorf("half a request closed after %v, want within the timeout of %v", d, timeout)
			}

			big := dial()
			big.Write([]byte(get + "X-Big: " + strings.Repeat("b", 64<<10) + "\r\n\r\n"))
			if got, _ := readUntilClosed(big, 5*time.Second); !strings.HasPrefix(string(got), "HTTP/1.1 431 ") {
				t.Errorf("64 KiB of headers got %.40q, want 431", got)
			}
		})
	}
}

// waitListening waits until the API socket is in place and the metrics listener has its address.
func (h *harness) waitListening() {
	h.t.Helper()
	var err error
	testkit.Eventually(h.t, waitFor, func() bool {
		var fi os.FileInfo
		fi, err = os.Lstat(h.cfg.Agent.Socket)
		return err == nil && fi.Mode().Type() == os.ModeSocket && h.agent.MetricsAddr() != ""
	}, "the agent is not listening (socket: %s)", func() string { return fmt.Sprint(err) })
}

// readUntilClosed reads conn until the agent closes it or within passes; closed is false when
// the time ran out first.
func readUntilClosed(conn net.Conn, within time.Duration) (got []byte, closed bool) {
	conn.SetReadDeadline(time.Now().Add(within))
	got, err := io.ReadAll(conn)
	var ne net.Error
	return got, !(errors.As(err, &ne) && ne.Timeout())
}
