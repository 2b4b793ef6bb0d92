package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/config"
)

// apiTimeout bounds a CLI call to the local API, so a wedged agent cannot hang a script.
const apiTimeout = 10 * time.Second

// socketUsage is the --socket flag's usage text.
const socketUsage = "talk to the agent at the socket `PATH`, without reading the configuration file"

// agentFlags adds --config and --socket to a command that talks to the running agent.
func agentFlags(c *command) (config, socket *string) {
	return c.String("config", defaultConfig, configUsage+" that names the agent's socket"), c.String("socket", "", socketUsage)
}

// agentSocket is the running agent's socket: --socket when given, so that a broken configuration
// file does not cut the operator off from a running agent, else the configuration's.
func agentSocket(c *command, config, socket string) (string, int) {
	explicit := false
	c.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	switch {
	case socket != "" && explicit:
		fmt.Fprintf(c.stderr, "cmx-agent %s: give --config or --socket, not both\n", c.Name())
		return "", c.usageError()
	case socket != "":
		return socket, 0
	}
	cfg, code := loadConfig(config, c.stderr)
	if cfg == nil {
		return "", code
	}
	return cfg.Agent.Socket, 0
}

// apiFailure says why the running agent could not be asked. A socket the user may not open is no
// missing agent: it wants root or the socket's group.
func apiFailure(socket string, err error) string {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Sprintf("permission denied on %s: run as root or join the cmx-agent group (usermod -aG cmx-agent USER, then log in again)", socket)
	}
	return err.Error()
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	c := newCommand("status", "[--config PATH | --socket PATH] [--json]",
		"Asks the running agent for its connection state and, per endpoint, what was applied and sent (exit 1: no agent answers).", stderr)
	path, socket := agentFlags(c)
	asJSON := c.Bool("json", false, "print the agent's answer as JSON")
	if code, ok := c.parseNoArgs(args, stdout); !ok {
		return code
	}
	sock, code := agentSocket(c, *path, *socket)
	if sock == "" {
		return code
	}
	st, err := askAgent(sock, apiTimeout, (*agent.APIClient).Status)
	if err != nil {
		fmt.Fprintln(stderr, "cmx-agent status:", apiFailure(sock, err))
		return 1
	}
	return show(stdout, stderr, "status", *asJSON, st, printStatus)
}

// askAgent calls the running agent's local API at sock with call, within timeout.
func askAgent[T any](sock string, timeout time.Duration, call func(*agent.APIClient, context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return call(agent.NewAPIClient(sock), ctx)
}

// show prints the agent's answer v: as JSON with --json (for scripts), else as print writes it
// for people.
func show[T any](stdout, stderr io.Writer, command string, asJSON bool, v T, print func(io.Writer, T)) int {
	if asJSON {
		return printJSON(stdout, stderr, command, v)
	}
	print(stdout, v)
	return 0
}

func printStatus(w io.Writer, st agent.Status) {
	switch {
	case st.Connected:
		fmt.Fprintf(w, "broker:  connected to %s (dialect %s)\n", st.Server, st.Dialect)
		if st.Degraded != "" {
			fmt.Fprintf(w, "         degraded: %s\n", st.Degraded)
		}
	case st.LastError != "":
		fmt.Fprintf(w, "broker:  not connected: %s (dialect %s)\n", st.LastError, st.Dialect)
	default:
		fmt.Fprintf(w, "broker:  not connected (dialect %s)\n", st.Dialect)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tAPPLIED\tAT\tLAST STATUS\tPENDING\tOUTPUT")
	for _, e := range st.Endpoints {
		applied, at := "-", "-"
		if e.Applied {
			applied = idOrDash(e.AppliedID, "(no id)")
			at = e.AppliedAt.Local().Format(time.DateTime)
		}
		last := "-"
		if e.LastStatus != "" {
			last = cell(idOrDash(e.LastID, "(no id)")) + ": " + cell(e.LastStatus)
		}
		if e.Damaged != "" {
			// The id and times were in the record; only what was applied is known (its hash).
			applied, at, last = "?", "?", "damaged: "+cell(e.Damaged)
		}
		if !e.ApplyingSince.IsZero() {
			last += fmt.Sprintf(" (applying %s for %s)", cell(idOrDash(e.ApplyingID, "(no id)")), time.Since(e.ApplyingSince).Round(time.Second))
		} else if e.Waiting {
			last += " (newer one waiting)"
		}
		if !e.RequestWaitingSince.IsZero() {
			last += " (request unanswered since " + e.RequestWaitingSince.Local().Format(time.DateTime) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", e.Key, cell(applied), at, last, e.Pending, e.Output)
	}
	tw.Flush()
	printSigned(w, st.Endpoints)
}

// printSigned adds a line per endpoint that has accepted a signed configuration or requires one.
func printSigned(w io.Writer, eps []agent.EndpointStatus) {
	for _, e := range eps {
		if e.SignedVersion == 0 && !e.RequireSigned {
			continue
		}
		version, unsigned := "none yet", "accepted"
		if e.SignedVersion > 0 {
			version = fmt.Sprint(e.SignedVersion)
		}
		if e.RequireSigned {
			unsigned = "refused"
		}
		fmt.Fprintf(w, "signed:  %s highest version accepted %s; unsigned configurations %s\n", e.Key, version, unsigned)
	}
}

// maxCell is how many characters of a status or id the table shows; --json has them whole.
const maxCell = 60

// cell makes s fit a table cell: control characters (a tab or newline in a server's id) become
// spaces, so they cannot break the columns, and past maxCell characters s is cut and ends with "…".
func cell(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if utf8.RuneCountInString(s) <= maxCell {
		return s
	}
	return string([]rune(s)[:maxCell]) + "…"
}

func idOrDash(id, none string) string {
	if id == "" {
		return none
	}
	return id
}

func cmdSync(args []string, stdout, stderr io.Writer) int {
	c := newCommand("sync", "[--config PATH | --socket PATH]",
		"Asks the running agent to request the latest configuration of every endpoint now.", stderr)
	path, socket := agentFlags(c)
	if code, ok := c.parseNoArgs(args, stdout); !ok {
		return code
	}
	sock, code := agentSocket(c, *path, *socket)
	if sock == "" {
		return code
	}
	res, err := askAgent(sock, apiTimeout, (*agent.APIClient).Sync)
	if err != nil {
		var ae *agent.APIError
		if errors.As(err, &ae) {
			fmt.Fprintln(stderr, "cmx-agent sync: the agent answered:", ae.Message)
		} else {
			fmt.Fprintln(stderr, "cmx-agent sync:", apiFailure(sock, err))
		}
		return 1
	}
	fmt.Fprintf(stdout, "latest configuration requested for %s\n", config.CountEndpoints(res.Requested))
	return 0
}
