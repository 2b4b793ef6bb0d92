package agent

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/mqtttest"
	"github.com/cmx-agent/cmx-agent/internal/testkit"
)

// newHarnessOn is newHarness for a broker the test started itself (TLS or password listeners), with
// brokerTOML as the body of the [broker] table (servers included).
func newHarnessOn(t *testing.T, b *mqtttest.Broker, brokerTOML string, tokens ...string) *harness {
	t.Helper()
	if len(tokens) == 0 {
		tokens = []string{"gw-001"}
	}
	dir := t.TempDir()
	var sb strings.Builder
	fmt.Fprintf(&sb, "[broker]\n%s\nreconnect_spread = \"0s\"\n[kaa]\napp_version = %q\n[agent]\nstate_dir = \"state\"\nsocket = \"state/agent.sock\"\nmax_payload = \"64KiB\"\n", brokerTOML, app)
	for _, tok := range tokens {
		fmt.Fprintf(&sb, "[[endpoint]]\ntoken = %q\noutput = \"out/%s.json\"\n", tok, tok)
	}
	cfg, err := config.Parse(filepath.Join(dir, "agent.toml"), []byte(sb.String()))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, sb.String())
	}
	h := &harness{t: t, broker: b, dir: dir, cfg: cfg}
	h.server = b.Client(t)
	h.all = h.server.Subscribe(t, "kp1/#", 2)
	t.Cleanup(h.stop)
	return h
}

// logLines returns the agent's log lines that contain substr.
func (h *harness) logLines(substr string) []string {
	var out []string
	for _, l := range strings.Split(h.logs.String(), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

// pushAndConfirm publishes a QoS 1 push with a string id and waits for its ok confirmation and file.
func (h *harness) pushAndConfirm(token, id, body string) {
	h.t.Helper()
	topic := h.prefix(token) + "/json"
	h.server.Publish(h.t, topic, 1, []byte(fmt.Sprintf(`{"id":%q,"entries":%s}`, id, body)))
	for {
		_, c := h.confirmed(topic + "/status")
		if string(c["id"]) != fmt.Sprintf("%q", id) {
			continue
		}
		if s := status(h.t, c); s != "ok" {
			h.t.Fatalf("push %s: status %q", id, s)
		}
		break
	}
	h.waitFile(h.output(token), []byte(body))
}

// startWith is start with options of the test's choosing (the logger and pause are the harness's).
func (h *harness) startWith(opt Options) {
	h.t.Helper()
	h.logs = &testkit.Buffer{}
	opt.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opt.Pause = h.pause
	a, err := New(h.cfg, opt)
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.agent, h.cancel, h.done = a, cancel, make(chan error, 1)
	go func() { h.done <- a.Run(ctx) }()
}
