// Command cmxctl is cmx-agent's cloud-side companion for operators, tests and the demo: it pushes a
// configuration and waits for the confirmation, serves configurations from a folder, runs an
// embedded MQTT broker, shows the whole loop with one command (cmxctl demo), and makes signing
// keys and signed configurations (keygen, sign).
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
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
  seal   --to RECIPIENT [FILE]
         print FILE's JSON value (stdin by default) sealed to a gateway's recipient (age1..., from
         cmx-agent identity): a {"$sealed": ...} object to put anywhere in a configuration
  sign   --key NAME.key --token T [--name N] [--version V] [--expires DUR] [--id ID] FILE
         print FILE's configuration signed (a JWS, for cmx-agent import or any push)
  version

common flags of push and serve:
  --broker URL (tcp://127.0.0.1:1883)  --app APP_VERSION (demo-v1)  --extension cmx
  --dialect cmx3|cmp7  --username U  --password-file FILE  --log-level info
  --ca-file FILE  --cert-file FILE  --key-file FILE   (TLS: a private CA, a client certificate)
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
	case "seal":
		return cmdSeal(args[1:], os.Stdin, stdout, stderr)
	case "sign":
		return cmdSign(args[1:], stdout, stderr)
	case "version", "--version":
		if len(args) > 1 && (args[1] == "-h" || args[1] == "--help") {
			fmt.Fprintf(stdout, "usage: cmxctl version\n\n%s\n", "print cmxctl's version, commit and Go version")
			return 0
		}
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
	o                         cloud.Options
	passwordFile              string
	caFile, certFile, keyFile string
	level                     string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.o.Broker, "broker", config.DefaultServer, "MQTT broker URL")
	fs.StringVar(&c.o.AppVersion, "app", "demo-v1", "application version (<appversion_name> in the topics)")
	fs.StringVar(&c.o.Extension, "extension", config.DefaultExtension, "extension instance name")
	fs.StringVar(&c.o.Dialect, "dialect", config.DefaultDialect, "cmx3 or cmp7")
	fs.StringVar(&c.o.Username, "username", "", "MQTT user name")
	fs.StringVar(&c.passwordFile, "password-file", "", "file holding the MQTT password")
	fs.StringVar(&c.caFile, "ca-file", "", "CA certificates (PEM) the broker's certificate must chain to (default: the system's); needs a tls:// --broker")
	fs.StringVar(&c.certFile, "cert-file", "", "client certificate (PEM) for brokers that require one, with --key-file")
	fs.StringVar(&c.keyFile, "key-file", "", "private key (PEM) of --cert-file")
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
	tc, err := c.tlsConfig()
	if err != nil {
		return err
	}
	c.o.TLS = tc
	return nil
}

// tlsConfig reads --ca-file, --cert-file and --key-file; nil when none is given.
func (c *common) tlsConfig() (*tls.Config, error) {
	var given string
	for _, f := range []struct{ flag, value string }{{"--ca-file", c.caFile}, {"--cert-file", c.certFile}, {"--key-file", c.keyFile}} {
		if f.value != "" {
			given = f.flag
			break
		}
	}
	if given == "" {
		return nil, nil
	}
	// paho keeps tcp:// and ws:// plain whatever the TLS settings: say so instead of connecting
	// in the clear.
	if !config.UsesTLS(c.o.Broker) {
		return nil, fmt.Errorf("%s needs a tls://, ssl://, mqtts:// or wss:// --broker URL: %s stays plain", given, c.o.Broker)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", c.caFile)
		}
	}
	if (c.certFile == "") != (c.keyFile == "") {
		return nil, errors.New("--cert-file and --key-file go together: give both or neither")
	}
	if c.certFile != "" {
		cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert-file %s / --key-file %s: %w", c.certFile, c.keyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// failed prints err as cmd's one line on stderr and returns the exit code: 2 for input that cannot
// be used (nothing was sent), 1 for the rest. A body at fault is named by file when there is one.
func failed(stderr io.Writer, cmd string, err error, file string) int {
	msg := err.Error()
	var body *cloud.BodyError
	if errors.As(err, &body) && file != "" {
		msg = file + " " + body.Problem
	}
	fmt.Fprintf(stderr, "cmxctl %s: %s\n", cmd, msg)
	var input *cloud.InputError
	if errors.As(err, &input) {
		return 2
	}
	return 1
}

// parse parses a subcommand's flags. On -h or --help it prints the subcommand's usage on stdout
// (synopsis, what it does, its flags with two dashes); on a bad flag one line on stderr. done
// says the command ends there, with code.
func parse(fs *flag.FlagSet, args []string, stdout, stderr io.Writer, synopsis, what string) (code int, done bool) {
	fs.SetOutput(io.Discard) // the flag package's own messages: replaced below
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprintf(stdout, "usage: cmxctl %s\n\n%s\n\nflags:\n", synopsis, what)
		printFlags(stdout, fs)
		return 0, true
	case err != nil:
		fmt.Fprintf(stderr, "cmxctl %s: %v (cmxctl %s --help lists the flags)\n", fs.Name(), err, fs.Name())
		return 2, true
	}
	return 0, false
}

// extraArgs reports, and says on stderr, that a command taking no positional argument got one.
func extraArgs(fs *flag.FlagSet, stderr io.Writer) bool {
	if fs.NArg() == 0 {
		return false
	}
	fmt.Fprintf(stderr, "cmxctl %s: unexpected argument %q (cmxctl %s --help lists the flags)\n", fs.Name(), fs.Arg(0), fs.Name())
	return true
}

// printFlags is flag.PrintDefaults with the flags written as operators type them: --name.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		line += "\n    \t" + strings.ReplaceAll(usage, "\n", "\n    \t")
		switch {
		case f.DefValue == "" || f.DefValue == "false" || f.DefValue == "0":
		case typ == "string":
			line += fmt.Sprintf(" (default %q)", f.DefValue)
		default:
			line += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintln(w, line)
	})
}

func cmdPush(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("push", flag.ContinueOnError)
	var c common
	c.register(fs)
	token := fs.String("token", "", "endpoint token (required)")
	name := fs.String("name", "", "cmp7: named configuration (default: the endpoint's default one)")
	idText := fs.String("id", "", `push id: a number stays a number, anything else is a string (default: "push-" and the time)`)
	waitFor := fs.Duration("wait", 10*time.Second, "how long to wait for the confirmation; 0 = do not wait")
	raw := fs.Bool("raw", false, "FILE is the whole message, sent as it is (to see how the agent answers malformed input)")
	signKey := fs.String("sign-key", "", "sign the configuration with this private key (NAME.key), version the current Unix time")
	if code, done := parse(fs, args, stdout, stderr,
		"push --token T [--name N] [--id ID] [--wait 10s] [--raw] [flags] FILE",
		"push FILE's configuration and wait for the confirmation; exit 0 only on \"ok\" (cmp7: FILE is\nthe config value, --id the configId, --name a named configuration; exit 0 only on an applied\nreport with a 2xx statusCode), 1 otherwise, 2 on input that cannot be used"); done {
		return code
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
		return failed(stderr, "push", err, fs.Arg(0))
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
	var c common
	c.register(fs)
	configs := fs.String("configs", "", "folder of configurations, <token>.json each, <token>.<name>.json for a cmp7 named one (required)")
	embedded := fs.String("embedded", "", "run an MQTT broker in this process on HOST:PORT (e.g. 127.0.0.1:1883) and use it")
	share := fs.String("share", "", "subscribe as $share/GROUP/ so several servers split the work (not on RabbitMQ: it does not support $share and delivers nothing)")
	signKey := fs.String("sign-key", "", "sign every configuration sent with this private key (NAME.key)")
	if code, done := parse(fs, args, stdout, stderr, "serve --configs DIR [--embedded HOST:PORT] [--share GROUP] [flags]",
		"answer requests with DIR/<token>.json (cmp7 also DIR/<token>.<name>.json), push a file when it\nchanges, print every confirmation or applied report"); done {
		return code
	}
	if extraArgs(fs, stderr) {
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
		return failed(stderr, "serve", err, "")
	}
	return 0
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	addr := fs.String("addr", "", "embedded broker address (default 127.0.0.1:1883, or a free port when taken)")
	exit := fs.Bool("exit", false, "exit after the walk-through instead of running until Ctrl-C")
	if code, done := parse(fs, args, stdout, stderr, "demo [--addr HOST:PORT] [--exit]",
		"the whole loop on this machine: embedded broker, server, agent, a push and its confirmation"); done {
		return code
	}
	if extraArgs(fs, stderr) {
		return 2
	}
	if err := cloud.Demo(ctx, cloud.DemoOptions{Out: stdout, Addr: *addr, Exit: *exit}); err != nil {
		fmt.Fprintln(stderr, "cmxctl:", err)
		return 1
	}
	return 0
}
