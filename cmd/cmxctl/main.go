// Command cmxctl is cmx-agent's cloud-side companion for operators, tests and the demo: it pushes a
// configuration and waits for the confirmation, serves configurations from a folder, runs an
// embedded MQTT broker, shows the whole loop with one command (cmxctl demo), and makes signing
// keys and signed configurations (keygen, sign).
package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/internal/cloud"
)

// Stamped by the packaging build with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `usage: cmxctl <command> [flags]

commands:
  demo   [--addr HOST:PORT] [--exit]
         the whole loop on this machine: embedded broker, server, agent, a push and its confirmation
  keygen -o NAME
         make a signing key pair: NAME.key (private, 0600), NAME.pub (for [trust] keys); prints its kid
  push   --token T [--name N] [--id ID] [--wait 10s] [--raw] [--sign-key NAME.key] FILE
         push FILE's configuration and wait for the confirmation (exit 0 only on "ok";
         cmp7: FILE is the config value, --id the configId, --name a named configuration,
         exit 0 only on an applied report with a 2xx statusCode); --sign-key signs it first
  serve  --configs DIR [--embedded HOST:PORT] [--share GROUP] [--sign-key NAME.key]
         answer requests with DIR/<token>.json (cmp7 also DIR/<token>.<name>.json), push when a
         file changes (cmp7: to the endpoint's latest observing request), print every
         confirmation or applied report; --share splits the work between servers on mosquitto or
         the embedded broker (RabbitMQ does not support $share: it delivers nothing to it);
         --sign-key signs every configuration sent, at its file's modification time as version
  sign   --key NAME.key --token T [--name N] [--version V] [--expires DUR] [--id ID] FILE
         print FILE's configuration signed (a JWS, for cmx-agent import or any push)
  version

common flags of push and serve:
  --broker URL (tcp://127.0.0.1:1883)  --app APP_VERSION (demo-v1)  --extension cmx
  --dialect cmx3|cmp7  --username U  --password-file FILE  --log-level info
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "push":
		return cmdPush(ctx, args[1:], stdout, stderr)
	case "serve":
		return cmdServe(ctx, args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(ctx, args[1:], stdout, stderr)
	case "keygen":
		return cmdKeygen(args[1:], stdout, stderr)
	case "sign":
		return cmdSign(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "cmxctl %s (commit %s, %s)\n", version, commit, runtime.Version())
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "cmxctl: unknown command %q\n%s", args[0], usage)
	return 2
}

type common struct {
	o            cloud.Options
	passwordFile string
	level        string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.o.Broker, "broker", config.DefaultServer, "MQTT broker URL")
	fs.StringVar(&c.o.AppVersion, "app", "demo-v1", "application version (<appversion_name> in the topics)")
	fs.StringVar(&c.o.Extension, "extension", config.DefaultExtension, "extension instance name")
	fs.StringVar(&c.o.Dialect, "dialect", config.DefaultDialect, "cmx3 or cmp7")
	fs.StringVar(&c.o.Username, "username", "", "MQTT user name")
	fs.StringVar(&c.passwordFile, "password-file", "", "file holding the MQTT password")
	fs.StringVar(&c.level, "log-level", "info", "log level: debug, info, warn or error")
}

func (c *common) finish(stderr io.Writer) error {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(c.level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	c.o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	if c.passwordFile != "" {
		b, err := os.ReadFile(c.passwordFile)
		if err != nil {
			return fmt.Errorf("--password-file: %w", err)
		}
		c.o.Password = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	}
	return nil
}

func cmdPush(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	token := fs.String("token", "", "endpoint token (required)")
	name := fs.String("name", "", "cmp7: named configuration (default: the endpoint's default one)")
	idText := fs.String("id", "", `push id: a number stays a number, anything else is a string (default: "push-" and the time)`)
	waitFor := fs.Duration("wait", 10*time.Second, "how long to wait for the confirmation; 0 = do not wait")
	raw := fs.Bool("raw", false, "FILE is the whole message, sent as it is (to see how the agent answers malformed input)")
	signKey := fs.String("sign-key", "", "sign the configuration with this private key (NAME.key), version the current Unix time")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *token == "" || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "cmxctl push: --token and exactly one FILE are required")
		return 2
	}
	if err := c.finish(stderr); err != nil {
		fmt.Fprintln(stderr, "cmxctl push:", err)
		return 2
	}
	body, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "cmxctl push:", err)
		return 2
	}
	tg := cloud.Target{Token: *token, Name: *name}
	if *signKey != "" {
		if *raw {
			fmt.Fprintln(stderr, "cmxctl push: --raw sends the message as it is: it cannot be signed")
			return 2
		}
		key, err := cloud.LoadSigningKey(*signKey)
		if err == nil {
			body, err = cloud.SignBody(key, c.o.Dialect, tg, body, time.Now().Unix())
		}
		if err != nil {
			fmt.Fprintln(stderr, "cmxctl push:", err)
			return 2
		}
	}
	if *idText == "" {
		*idText = "push-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	id, err := cloud.ParseID(*idText)
	if err != nil {
		fmt.Fprintln(stderr, "cmxctl push: --id:", err)
		return 2
	}
	push := cloud.Push
	if *raw {
		push = cloud.PushRaw
	}
	conf, err := push(ctx, c.o, tg, id, body, *waitFor)
	if err != nil {
		fmt.Fprintln(stderr, "cmxctl push:", err)
		return 1
	}
	if *waitFor <= 0 {
		fmt.Fprintf(stdout, "pushed %s id=%s (not waiting for the confirmation)\n", tg, id.JSON())
		return 0
	}
	fmt.Fprintln(stdout, conf)
	if !conf.OK() {
		return 1
	}
	return 0
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	configs := fs.String("configs", "", "folder of configurations, <token>.json each, <token>.<name>.json for a cmp7 named one (required)")
	embedded := fs.String("embedded", "", "run an MQTT broker in this process on HOST:PORT (e.g. 127.0.0.1:1883) and use it")
	share := fs.String("share", "", "subscribe as $share/GROUP/ so several servers split the work (not on RabbitMQ: it does not support $share and delivers nothing)")
	signKey := fs.String("sign-key", "", "sign every configuration sent with this private key (NAME.key)")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return 2
	}
	if *configs == "" {
		fmt.Fprintln(stderr, "cmxctl serve: --configs is required")
		return 2
	}
	if err := c.finish(stderr); err != nil {
		fmt.Fprintln(stderr, "cmxctl serve:", err)
		return 2
	}
	var key ed25519.PrivateKey
	if *signKey != "" {
		var err error
		if key, err = cloud.LoadSigningKey(*signKey); err != nil {
			fmt.Fprintln(stderr, "cmxctl serve:", err)
			return 2
		}
	}
	if *embedded != "" {
		b, err := cloud.StartBroker(*embedded, c.o.Logger.With("part", "broker"))
		if err != nil {
			fmt.Fprintln(stderr, "cmxctl serve:", err)
			return 1
		}
		defer b.Close()
		c.o.Broker = b.URL()
		c.o.Logger.Info("embedded broker listening", "addr", b.Addr())
	}
	err := cloud.Serve(ctx, cloud.ServeOptions{Options: c.o, Configs: *configs, Share: *share, Out: stdout, SignKey: key})
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(stderr, "cmxctl serve:", err)
		return 1
	}
	return 0
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "embedded broker address (default 127.0.0.1:1883, or a free port when taken)")
	exit := fs.Bool("exit", false, "exit after the walk-through instead of running until Ctrl-C")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return 2
	}
	if err := cloud.Demo(ctx, cloud.DemoOptions{Out: stdout, Addr: *addr, Exit: *exit}); err != nil {
		fmt.Fprintln(stderr, "cmxctl:", err)
		return 1
	}
	return 0
}
