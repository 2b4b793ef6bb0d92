package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"

	"golang.org/x/sys/unix"

	"github.com/cmx-agent/cmx-agent/apply"
	"github.com/cmx-agent/cmx-agent/config"
)

// configFileMode is the mode init gives the configuration file: it may name credentials, and
// only root and the agent's group need to read it.
const configFileMode = 0o640

// agentGroup is the group the packages create for the agent; a new configuration file gets it,
// so that the service (User=cmx-agent) can read it.
const agentGroup = "cmx-agent"

// initValues are what init puts in the file.
type initValues struct {
	Token, Server, AppVersion, Dialect, Output, CAFile string
}

// initTemplate is the file init writes: the keys a gateway needs, and the others commented out
// with what they do, so that the file is its own short manual. Values are quoted by q.
var initTemplate = template.Must(template.New("agent.toml").Funcs(template.FuncMap{"q": tomlString}).Parse(
	`# cmx-agent configuration of this gateway, written by cmx-agent init. Every key is described in
# cmx-agent.toml(5) (man 5 cmx-agent.toml). Check a change with
#   cmx-agent check --config {{.Path}}            (add --online to test the broker too)
# and apply it with
#   systemctl reload cmx-agent

[broker]
# MQTT servers, tried in order: tcp://, tls://, ws://, wss://.
servers = [{{q .Server}}]
# client_id = ""            # default "cmx-agent-" + the first endpoint's token, kept in the database
# username = ""
# password_file = ""        # the password is read from this file
{{if .CAFile}}ca_file = {{q .CAFile}}{{else}}# ca_file = ""              # PEM; empty = the system's roots (tls://, wss://){{end}}
# cert_file = ""            # client certificate and key, for mutual TLS
# key_file = ""

[kaa]
app_version = {{q .AppVersion}}
extension = "cmx"
dialect = {{q .Dialect}}             # "cmx3" (3/CMX) or "cmp7" (Kaa 1.x, 7/CMP)

[agent]
state_dir = "/var/lib/cmx-agent"
socket = "/run/cmx-agent/agent.sock"

# One [[endpoint]] per device this gateway configures; this one is the gateway's own.
[[endpoint]]
token = {{q .Token}}
output = {{q .Output}}      # the configuration body, replaced atomically
# mode = "0644"
# owner = ""                # user and group set on output ("" = the agent's own)
# group = ""
# validate = []             # argv run on the candidate ($CMX_CANDIDATE) before it goes live
# hook = []                 # argv run once the new file is in place: ["systemctl", "reload", "myapp"]
`))

// tomlString quotes s as a TOML basic string. Control characters were refused before.
func tomlString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func cmdInit(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	c := newCommand("init", "--config PATH --token T --server URL --app-version A [--dialect D] [--output PATH] [--ca-file F] [--force]",
		"Writes this gateway's configuration file (mode 0640), commented, that check accepts; asks on a terminal for what is missing.", stderr)
	path := c.String("config", defaultConfig, "write the configuration file `PATH`")
	v := initValues{}
	c.StringVar(&v.Token, "token", "", "this gateway's endpoint `TOKEN`")
	c.StringVar(&v.Server, "server", "", "the MQTT broker's `URL` (tcp://, tls://, ws://, wss://)")
	c.StringVar(&v.AppVersion, "app-version", "", "the application version `NAME` on the Kaa server")
	c.StringVar(&v.Dialect, "dialect", config.DefaultDialect, "the `DIALECT`: cmx3 (3/CMX) or cmp7 (Kaa 1.x)")
	c.StringVar(&v.Output, "output", "", "the output file `PATH` (default /var/lib/cmx-agent/out/TOKEN.json)")
	c.StringVar(&v.CAFile, "ca-file", "", "the PEM `FILE` of the broker's certificate authority (default: the system's roots)")
	force := c.Bool("force", false, "replace an existing file")
	if code, ok := c.parseNoArgs(args, stdout); !ok {
		return code
	}
	if _, err := os.Lstat(*path); err == nil && !*force {
		fmt.Fprintf(stderr, "cmx-agent init: %s exists and is kept as it is; add --force to replace it\n", *path)
		return 2
	}
	if code, ok := askMissing(c, &v, stdin, stderr); !ok {
		return code
	}
	if v.Output == "" {
		v.Output = filepath.Join(config.DefaultStateDir, "out", v.Token+".json")
	}
	for name, val := range map[string]string{"token": v.Token, "server": v.Server, "app-version": v.AppVersion, "dialect": v.Dialect, "output": v.Output, "ca-file": v.CAFile} {
		if strings.ContainsFunc(val, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			fmt.Fprintf(stderr, "cmx-agent init: --%s: %q holds a control character\n", name, val)
			return 2
		}
	}
	var b strings.Builder
	if err := initTemplate.Execute(&b, struct {
		initValues
		Path string
	}{v, *path}); err != nil {
		fmt.Fprintln(stderr, "cmx-agent init:", err)
		return 1
	}
	// What check would say of the file, before anything is written: init never leaves a file the
	// agent refuses.
	if _, err := config.Parse(*path, []byte(b.String())); err != nil {
		fmt.Fprintf(stderr, "cmx-agent init: %s not written, it would not be valid:\n", *path)
		var probs config.Problems
		if errors.As(err, &probs) {
			for _, p := range probs {
				fmt.Fprintln(stderr, "  "+p.Msg)
			}
		} else {
			fmt.Fprintln(stderr, "  "+err.Error())
		}
		return 2
	}
	if err := writeConfigFile(*path, []byte(b.String())); err != nil {
		fmt.Fprintln(stderr, "cmx-agent init:", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s (mode %04o)\nnext: cmx-agent check --online --config %s, then systemctl restart cmx-agent\n", *path, configFileMode, *path)
	return 0
}

// askMissing asks on the terminal for the values init needs and was not given. Without a
// terminal it names the missing flags (exit 2): a script must not hang on a question.
func askMissing(c *command, v *initValues, stdin *os.File, stderr io.Writer) (code int, ok bool) {
	need := []struct {
		flag, what string
		dst        *string
	}{
		{"token", "endpoint token of this gateway", &v.Token},
		{"server", "MQTT broker URL (tcp://HOST:1883, tls://HOST:8883)", &v.Server},
		{"app-version", "application version on the Kaa server", &v.AppVersion},
	}
	var missing []string
	for _, n := range need {
		if *n.dst == "" {
			missing = append(missing, "--"+n.flag)
		}
	}
	if len(missing) == 0 {
		return 0, true
	}
	if !isTerminal(stdin) {
		fmt.Fprintf(stderr, "cmx-agent init: missing %s (stdin is not a terminal to ask on)\n", strings.Join(missing, ", "))
		return c.usageError(), false
	}
	in := bufio.NewReader(stdin)
	for _, n := range need {
		if *n.dst != "" {
			continue
		}
		fmt.Fprintf(stderr, "%s (--%s): ", n.what, n.flag)
		line, err := in.ReadString('\n')
		*n.dst = strings.TrimSpace(line)
		if *n.dst == "" {
			if err == nil {
				err = errors.New("no answer")
			}
			fmt.Fprintf(stderr, "\ncmx-agent init: --%s: %v\n", n.flag, err)
			return 2, false
		}
	}
	return 0, true
}

// isTerminal reports whether f is a terminal (a tty answers TCGETS; a pipe, a file or /dev/null
// does not).
func isTerminal(f *os.File) bool {
	if f == nil {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// writeConfigFile replaces path atomically and durably with mode 0640. A replaced file keeps its
// owner and group (the packaged one is root:cmx-agent, which the service needs to read it); a new
// one gets the group cmx-agent where it exists.
func writeConfigFile(path string, data []byte) error {
	own := apply.NoOwner
	if fi, err := os.Stat(path); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			own = apply.Owner{UID: int(st.Uid), GID: int(st.Gid)}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	} else if g, err := user.LookupGroup(agentGroup); err == nil && os.Geteuid() == 0 {
		own.GID, _ = strconv.Atoi(g.Gid)
	}
	if err := apply.WriteFile(path, data, apply.Options{Perm: configFileMode}); err != nil {
		return err
	}
	if err := own.Chown(path); err != nil {
		return fmt.Errorf("%s written, but its owner could not be set: %w", path, err)
	}
	return nil
}
