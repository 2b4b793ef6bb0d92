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
	d := &demo{out: o.Out, confs: make(chan Confirmation, 16)}
	if d.out == nil {
		d.out = io.Discard
	}
	dir, removeDir, err := demoDir(o.Dir)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer removeDir()
	d.dir = dir
	log, closeLog, err := demoLogger(o.Logger, dir)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer closeLog()
	broker, err := StartBroker(demoAddr(o.Addr), log.With("part", "broker"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer broker.Close()
	d.broker = broker
	fmt.Fprintf(d.out, "== embedded MQTT broker on %s\n", broker.Addr())

	d.co = Options{Broker: broker.URL(), AppVersion: demoApp, Logger: log.With("part", "server")}
	if err := d.startServer(ctx); err != nil {
		return err
	}
	stopAgent, err := d.startAgent(ctx, log.With("part", "agent"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer func() {
		cancel()
		stopAgent()
	}()
	if err := d.walkThrough(ctx); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if o.Exit {
		// The broker, the server and the agent stop as Demo returns, and a temporary folder goes
		// with them: steps that need them would fail.
		if o.Dir != "" {
			fmt.Fprintf(d.out, "Files: %s (agent.toml, configs/, out/, state/, demo.log)\n", dir)
		}
		fmt.Fprintln(d.out, "Run cmxctl demo without --exit to keep the loop running and try more from another terminal.")
		return nil
	}
	return d.keepRunning(ctx)
}

// demo is what the steps of Demo share.
type demo struct {
	out       io.Writer
	dir       string
	broker    *Broker
	co        Options           // the server's and the pushes' options
	confs     chan Confirmation // what the server hears from the agent
	agentDone chan struct{}     // closed when the agent's Run has returned agentErr
	agentErr  error
}

func (d *demo) configs() string  { return filepath.Join(d.dir, "configs") }
func (d *demo) output() string   { return filepath.Join(d.dir, "out", demoToken+".json") }
func (d *demo) confPath() string { return filepath.Join(d.dir, "agent.toml") }

// demoDir returns dir, or a new temporary folder that remove deletes, with the demo's configs
// and out folders in it.
func demoDir(dir string) (string, func(), error) {
	remove := func() {}
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "cmx-demo-"); err != nil {
			return "", nil, err
		}
		remove = func() { os.RemoveAll(dir) }
	}
	for _, sub := range []string{"configs", "out"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			remove()
			return "", nil, err
		}
	}
	return dir, remove, nil
}

// demoLogger returns log, or one writing to dir/demo.log that closeLog closes.
func demoLogger(log *slog.Logger, dir string) (_ *slog.Logger, closeLog func(), _ error) {
	if log != nil {
		return log, func() {}, nil
	}
	f, err := os.Create(filepath.Join(dir, "demo.log"))
	if err != nil {
		return nil, nil, err
	}
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo})), func() { f.Close() }, nil
}

// demoAddr is addr, or MQTT's usual 127.0.0.1:1883 when it is free, else a free port.
func demoAddr(addr string) string {
	if addr != "" {
		return addr
	}
	l, err := net.Listen("tcp", "127.0.0.1:1883")
	if err != nil {
		return "127.0.0.1:0"
	}
	l.Close()
	return "127.0.0.1:1883"
}

// startServer writes the first configuration and starts the server on it; it returns once the
// server is subscribed.
func (d *demo) startServer(ctx context.Context) error {
	first := []byte(`[{"sampling_ms": 500}, {"unit": "C"}]`)
	if err := os.WriteFile(filepath.Join(d.configs(), demoToken+".json"), first, 0o644); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	serveReady := make(chan struct{})
	serveDone := make(chan error, 1)
	go func() {
		serveDone <- Serve(ctx, ServeOptions{
			Options: d.co,
			Configs: d.configs(),
			OnConfirmation: func(c Confirmation) {
				select {
				case d.confs <- c:
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
	fmt.Fprintf(d.out, "== cmxctl serve: answers requests with %s/<token>.json and pushes when a file changes\n", d.configs())
	return nil
}

// startAgent writes the agent's configuration and runs the agent until ctx ends; stop waits for
// it and closes it.
func (d *demo) startAgent(ctx context.Context, log *slog.Logger) (stop func(), err error) {
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
`, d.broker.URL(), demoApp, demoToken, demoToken)
	if err := os.WriteFile(d.confPath(), []byte(toml), 0o644); err != nil {
		return nil, err
	}
	cfg, err := config.Load(d.confPath())
	if err != nil {
		return nil, err
	}
	a, err := agent.New(cfg, agent.Options{Options: engine.Options{Logger: log}})
	if err != nil {
		return nil, err
	}
	stop = d.runAgent(func() error { return a.Run(ctx) }, func() { a.Close() })
	fmt.Fprintf(d.out, "== cmx-agent running on %s (endpoint %s, output out/%s.json)\n\n", d.confPath(), demoToken, demoToken)
	return stop, nil
}

// runAgent runs the agent (run) and returns what waits for it to end, then closes it (closeAgent).
func (d *demo) runAgent(run func() error, closeAgent func()) (stop func()) {
	// Closed, not sent on: the walk-through, the loop and the clean-up may each see the agent end,
	// and none takes the news from another.
	d.agentDone = make(chan struct{})
	go func() { d.agentErr = run(); close(d.agentDone) }()
	return func() {
		<-d.agentDone
		closeAgent()
	}
}

// walkThrough shows the three steps: the answer to the agent's request at start, a push, and a
// bad push refused.
func (d *demo) walkThrough(ctx context.Context) error {
	fmt.Fprintf(d.out, "1. At start the agent asked for its configuration; the server answered with configs/%s.json.\n", demoToken)
	c, err := d.waitConfirmation(ctx)
	if err != nil {
		return err
	}
	d.show(c)

	second := []byte(`[{"sampling_ms": 250}, {"unit": "C"}]`)
	id, _ := ParseID("42")
	fmt.Fprintf(d.out, "2. cmxctl push --token %s --id 42 sends %s and waits for the confirmation.\n", demoToken, second)
	if c, err = Push(ctx, d.co, Target{Token: demoToken}, id, second, 30*time.Second); err != nil {
		return err
	}
	d.show(c)

	bad := []byte(`{"id": 43, "entries": {"sampling_ms": 100}}`)
	bid, _ := ParseID("43")
	fmt.Fprintf(d.out, "3. cmxctl push --raw sends a bad message, %s: refused with a status that says why; the file stays.\n", bad)
	if c, err = PushRaw(ctx, d.co, Target{Token: demoToken}, bid, bad, 30*time.Second); err != nil {
		return err
	}
	d.show(c)
	return nil
}

// waitConfirmation waits for the first confirmation the server hears.
func (d *demo) waitConfirmation(ctx context.Context) (Confirmation, error) {
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case c := <-d.confs:
		return c, nil
	case <-d.agentDone:
		return Confirmation{}, fmt.Errorf("agent stopped: %v", d.agentErr)
	case <-timer.C:
		return Confirmation{}, errors.New("no confirmation within 30s (see " + filepath.Join(d.dir, "demo.log") + ")")
	case <-ctx.Done():
		return Confirmation{}, ctx.Err()
	}
}

// show prints the output file and the agent's answer c.
func (d *demo) show(c Confirmation) {
	body, _ := os.ReadFile(d.output())
	fmt.Fprintf(d.out, "   %s now holds: %s\n   the agent answered: %s\n\n", d.output(), body, c)
}

// keepRunning says what to try next and prints every confirmation until ctx ends or the agent
// stops.
func (d *demo) keepRunning(ctx context.Context) error {
	fmt.Fprintf(d.out, `Try next (from the repository root, in another terminal):
  go run ./cmd/cmx-agent status --config %[1]s
  echo '[{"sampling_ms": 1000}]' > %[2]s    # the server pushes the change
  go run ./cmd/cmxctl push --broker %[3]s --app %[4]s --token %[5]s --wait 10s FILE.json
  go run ./cmd/cmx-agent sync --config %[1]s
Files: %[6]s (agent.toml, configs/, out/, state/, demo.log)
`, d.confPath(), filepath.Join(d.configs(), demoToken+".json"), d.broker.URL(), demoApp, demoToken, d.dir)
	fmt.Fprintln(d.out, "The demo keeps running; Ctrl-C stops it and removes its folder.")
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.agentDone:
			return fmt.Errorf("demo: agent stopped: %v", d.agentErr)
		case c := <-d.confs:
			body, _ := os.ReadFile(d.output())
			fmt.Fprintf(d.out, "%s -> %s\n", c, strings.TrimSpace(string(body)))
		}
	}
}
