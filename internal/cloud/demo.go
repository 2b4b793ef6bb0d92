package cloud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/cmx"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
)

// DemoOptions configure Demo.
type DemoOptions struct {
	Out io.Writer // what the user reads
	// Dir is the demo's folder; "" makes a temporary one that is removed at the end.
	Dir string
	// Addr is the embedded broker's address; "" takes 127.0.0.1:1883 when free, else a free port.
	Addr string
	// Exit ends the demo after the walk-through instead of running until ctx ends.
	Exit bool
	// Logger receives the broker's, server's and agent's logs (default: Dir/demo.log).
	Logger *slog.Logger
}

const (
	demoApp   = "demo-v1"
	demoToken = "gw-001"
)

// Demo runs the whole loop on one machine: an embedded broker, a server answering from a folder,
// and an agent, then pushes an example and shows the file and the confirmation.
func Demo(ctx context.Context, o DemoOptions) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	dir := o.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "cmx-demo-"); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		defer os.RemoveAll(dir)
	}
	for _, d := range []string{"configs", "out"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	log := o.Logger
	if log == nil {
		f, err := os.Create(filepath.Join(dir, "demo.log"))
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		defer f.Close()
		log = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}

	addr := o.Addr
	if addr == "" {
		addr = "127.0.0.1:1883"
		if l, err := net.Listen("tcp", addr); err != nil {
			addr = "127.0.0.1:0"
		} else {
			l.Close()
		}
	}
	broker, err := StartBroker(addr, log.With("part", "broker"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer broker.Close()
	fmt.Fprintf(out, "== embedded MQTT broker on %s\n", broker.Addr())

	configs := filepath.Join(dir, "configs")
	first := []byte(`[{"sampling_ms": 500}, {"unit": "C"}]`)
	if err := os.WriteFile(filepath.Join(configs, demoToken+".json"), first, 0o644); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	confs := make(chan Confirmation, 16)
	serveReady := make(chan struct{})
	serveDone := make(chan error, 1)
	co := Options{Broker: broker.URL(), AppVersion: demoApp, Logger: log.With("part", "server")}
	go func() {
		serveDone <- Serve(ctx, ServeOptions{
			Options: co,
			Configs: configs,
			OnConfirmation: func(c Confirmation) {
				select {
				case confs <- c:
				default:
				}
			},
			Ready: func() { close(serveReady) },
		})
	}()
	select {
	case <-serveReady:
	case err := <-serveDone:
		return fmt.Errorf("demo: server: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	fmt.Fprintf(out, "== cmxctl serve: answers requests with %s/<token>.json and pushes when a file changes\n", configs)

	confPath := filepath.Join(dir, "agent.toml")
	toml := fmt.Sprintf(`[broker]
servers = [%q]
[kaa]
app_version = %q
[agent]
state_dir = "state"
socket = "state/agent.sock"
[[endpoint]]
token = %q
output = "out/%s.json"
`, broker.URL(), demoApp, demoToken, demoToken)
	if err := os.WriteFile(confPath, []byte(toml), 0o644); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	cfg, err := config.Load(confPath)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	a, err := agent.New(cfg, agent.Options{Options: engine.Options{Logger: log.With("part", "agent")}})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()
	defer func() {
		cancel()
		<-agentDone
		a.Close()
	}()
	fmt.Fprintf(out, "== cmx-agent running on %s (endpoint %s, output out/%s.json)\n\n", confPath, demoToken, demoToken)

	output := filepath.Join(dir, "out", demoToken+".json")
	show := func(c Confirmation) {
		body, _ := os.ReadFile(output)
		fmt.Fprintf(out, "   %s now holds: %s\n   the agent answered: %s\n\n", output, body, c)
	}
	waitConf := func(id cmx.ID) (Confirmation, error) {
		timer := time.NewTimer(30 * time.Second)
		defer timer.Stop()
		for {
			select {
			case c := <-confs:
				if id.IsZero() || c.ID.Key() == id.Key() {
					return c, nil
				}
			case err := <-agentDone:
				return Confirmation{}, fmt.Errorf("agent stopped: %v", err)
			case <-timer.C:
				return Confirmation{}, errors.New("no confirmation within 30s (see " + filepath.Join(dir, "demo.log") + ")")
			case <-ctx.Done():
				return Confirmation{}, ctx.Err()
			}
		}
	}

	fmt.Fprintf(out, "1. At start the agent asked for its configuration; the server answered with configs/%s.json.\n", demoToken)
	c, err := waitConf(cmx.ID{})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	show(c)

	second := []byte(`[{"sampling_ms": 250}, {"unit": "C"}]`)
	id, _ := ParseID("42")
	fmt.Fprintf(out, "2. cmxctl push --token %s --id 42 sends %s and waits for the confirmation.\n", demoToken, second)
	c, err = Push(ctx, co, Target{Token: demoToken}, id, second, 30*time.Second)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	show(c)

	bad := []byte(`{"id": 43, "entries": {"sampling_ms": 100}}`)
	bid, _ := ParseID("43")
	fmt.Fprintf(out, "3. cmxctl push --raw sends a bad message, %s: refused with a status that says why; the file stays.\n", bad)
	c, err = PushRaw(ctx, co, Target{Token: demoToken}, bid, bad, 30*time.Second)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	show(c)

	if o.Exit {
		// The broker, the server and the agent stop as Demo returns, and a temporary folder goes
		// with them: steps that need them would fail.
		if o.Dir != "" {
			fmt.Fprintf(out, "Files: %s (agent.toml, configs/, out/, state/, demo.log)\n", dir)
		}
		fmt.Fprintln(out, "Run cmxctl demo without --exit to keep the loop running and try more from another terminal.")
		return nil
	}
	url := broker.URL()
	fmt.Fprintf(out, `Try next (from the repository root, in another terminal):
  go run ./cmd/cmx-agent status --config %[1]s
  echo '[{"sampling_ms": 1000}]' > %[2]s    # the server pushes the change
  go run ./cmd/cmxctl push --broker %[3]s --app %[4]s --token %[5]s --wait 10s FILE.json
  go run ./cmd/cmx-agent sync --config %[1]s
Files: %[6]s (agent.toml, configs/, out/, state/, demo.log)
`, confPath, filepath.Join(configs, demoToken+".json"), url, demoApp, demoToken, dir)
	fmt.Fprintln(out, "The demo keeps running; Ctrl-C stops it and removes its folder.")
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-agentDone:
			agentDone <- err
			return fmt.Errorf("demo: agent stopped: %v", err)
		case c := <-confs:
			body, _ := os.ReadFile(output)
			fmt.Fprintf(out, "%s -> %s\n", c, strings.TrimSpace(string(body)))
		}
	}
}
