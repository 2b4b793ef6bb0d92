// Command cmx-agent is the gateway side of the Kaa Configuration Management Extension: it receives
// configurations over MQTT, writes them to files atomically and durably, and confirms each one.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
)

// Stamped by the packaging build with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = ""
)

const defaultConfig = "/etc/cmx-agent/agent.toml"

// pauseEnv names a durable step at which the agent stops and waits to be killed. Crash tests use it
// to kill the process at an exact point; it has no other use.
const pauseEnv = "CMX_AGENT_TEST_PAUSE"

const usage = `usage: cmx-agent <command> [flags]

commands:
  init   --config PATH --token T --server URL --app-version A [--dialect D] [--output PATH] [--ca-file F] [--force]
         write this gateway's configuration file (asks on a terminal for what is missing)
  run    [--config PATH] [--log-format text|json] [--log-level debug|info|warn|error]
         run the agent in the foreground
  check  [--config PATH] [--online]
         validate a configuration file (exit 0 valid, 2 invalid); --online also tests the broker,
         the subscriptions and the outputs' folders (exit 1 when one fails)
  status [--config PATH | --socket PATH] [--json]
         ask the running agent for its connection and endpoints (exit 1: no agent)
  sync   [--config PATH | --socket PATH]
         ask the running agent to request the latest configuration now
  history [--config PATH | --socket PATH] [--json] [TOKEN[/NAME]]
         the last applied configurations per endpoint, newest first
  watch  [--debounce D] PATH [-- CMD ARGS...]
         print time, size and sha256 of each version of PATH; run CMD after each new one
  bundle [--config PATH] [--socket PATH] [-o FILE] [--with-outputs] [--journal-lines N]
         write a support bundle (.tar.gz, mode 0600) without secrets, for a ticket
  import [--config PATH | --socket PATH] FILE...
         apply signed configurations from files through the running agent (exit 0: all ok)
  identity [--config PATH]
         print the agent's age recipient, to which configurations seal values
  version                  print version, commit and Go version

Every command answers --help with its usage.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "sync":
		return cmdSync(args[1:], stdout, stderr)
	case "history":
		return cmdHistory(args[1:], stdout, stderr)
	case "watch":
		return cmdWatch(args[1:], stdout, stderr)
	case "bundle":
		return cmdBundle(args[1:], stdout, stderr)
	case "identity":
		return cmdIdentity(args[1:], stdout, stderr)
	case "import":
		return cmdImport(args[1:], stdout, stderr)
	case "init":
		return cmdInit(args[1:], os.Stdin, stdout, stderr)
	case "version":
		return cmdVersion(args[1:], stdout, stderr)
	case "--version", "-v":
		fmt.Fprintln(stdout, versionLine())
		return 0
	case "help", "--help", "-h":
		if len(args) > 1 && args[1] != "help" && !strings.HasPrefix(args[1], "-") {
			// `help CMD` is CMD's own --help.
			return run([]string{args[1], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "cmx-agent: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

func commitID() string {
	if commit != "" {
		return commit
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// loadConfig prints every problem of an invalid file and returns exit code 2 with it.
func loadConfig(path string, stderr io.Writer) (*config.Config, int) {
	cfg, err := config.Load(path)
	if err == nil {
		return cfg, 0
	}
	var probs config.Problems
	if errors.As(err, &probs) {
		for _, p := range probs {
			fmt.Fprintln(stderr, p.String())
		}
	} else {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
	}
	return nil, 2
}

// configUsage is the --config flag's usage text; `PATH` names its value in --help.
const configUsage = "the configuration file `PATH`"

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	c := newCommand("version", "", "Prints the version, the commit and the Go version.", stderr)
	if code, ok := c.parseNoArgs(args, stdout); !ok {
		return code
	}
	fmt.Fprintln(stdout, versionLine())
	return 0
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	c := newCommand("check", "[--config PATH] [--online]",
		"Validates a configuration file and prints each problem as PATH:LINE: message (exit 0 valid, 2 invalid).", stderr)
	path := c.String("config", defaultConfig, configUsage)
	online := c.Bool("online", false, "then check what only the live system shows: broker, subscriptions, output folders (exit 1 when one fails)")
	if code, ok := c.parseNoArgs(args, stdout); !ok {
		return code
	}
	cfg, code := loadConfig(*path, stderr)
	if cfg == nil {
		return code
	}
	// Warnings leave the file valid: exit 0, each printed like a problem.
	for _, w := range cfg.Warnings {
		fmt.Fprintln(stderr, w.String())
	}
	fmt.Fprintf(stdout, "%s: %s\n", *path, cfg.CheckLine())
	if *online {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		return checkOnline(ctx, cfg, stdout)
	}
	return 0
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	c := newCommand("run", "[--config PATH] [--log-format text|json] [--log-level debug|info|warn|error]",
		"Runs the agent in the foreground (what the systemd unit starts); logs go to stderr.", stderr)
	path := c.String("config", defaultConfig, configUsage)
	format := c.String("log-format", "text", "log `FORMAT`: text or json")
	level := c.String("log-level", "info", "log `LEVEL`: debug, info, warn or error")
	if code, ok := c.parseNoArgs(args, stdout); !ok {
		return code
	}
	log, err := newLogger(stderr, *format, *level)
	if err != nil {
		fmt.Fprintln(stderr, "cmx-agent:", err)
		return 2
	}
	cfg, code := loadConfig(*path, stderr)
	if cfg == nil {
		return code
	}
	logWarnings(log, cfg)
	opts := agent.Options{Options: engine.Options{Logger: log}, Build: agent.Build{Version: version, Commit: commitID()}}
	changes := make(chan struct{}, 1)
	opts.OnChange = func() {
		select {
		case changes <- struct{}{}:
		default:
		}
	}
	opts.Pause = func(string) {}
	if step := os.Getenv(pauseEnv); step != "" {
		opts.Pause = func(s string) {
			if s == step {
				fmt.Fprintf(stderr, "cmx-agent: test pause at %s\n", s)
				select {} // until killed
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if code := serve(ctx, cfg, opts, log, &notifier{log: log}, changes); code != 0 {
		return code
	}
	log.Info("cmx-agent stopped")
	return 0
}
