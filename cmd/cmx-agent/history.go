package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
)

func cmdHistory(args []string, stdout, stderr io.Writer) int {
	c := newCommand("history", "[--config PATH | --socket PATH] [--json] [TOKEN[/NAME]]",
		"Lists the last configurations applied to each endpoint, newest first: when, id, sha256 of the output and how it came (exit 1: no agent answers).", stderr)
	path, socket := agentFlags(c)
	asJSON := c.Bool("json", false, "print the agent's answer as JSON")
	if code, ok := c.parse(args, stdout); !ok {
		return code
	}
	// TOKEN[/NAME] may come before the flags as well as after them.
	var key string
	if c.NArg() > 0 {
		key = c.Arg(0)
		if code, ok := c.parseNoArgs(c.Args()[1:], stdout); !ok {
			return code
		}
	}
	sock, code := agentSocket(c, *path, *socket)
	if sock == "" {
		return code
	}
	h, err := askAgent(sock, apiTimeout, func(c *agent.APIClient, ctx context.Context) (agent.History, error) {
		return c.History(ctx, key)
	})
	if err != nil {
		var ae *agent.APIError
		if errors.As(err, &ae) && ae.Code == http.StatusNotFound {
			fmt.Fprintln(stderr, "cmx-agent history:", ae.Message)
			return 2
		}
		fmt.Fprintln(stderr, "cmx-agent history:", apiFailure(sock, err))
		return 1
	}
	return show(stdout, stderr, "history", *asJSON, h, printHistory)
}

// printHistory writes one line per applied configuration, each endpoint's newest first.
func printHistory(w io.Writer, h agent.History) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tAPPLIED AT\tID\tVIA\tVERSION\tSHA256")
	for _, ep := range h.Endpoints {
		switch {
		case ep.Damaged != "":
			fmt.Fprintf(tw, "%s\t?\t?\t?\t?\tdamaged: %s\n", ep.Key, cell(ep.Damaged))
		case len(ep.Entries) == 0:
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\n", ep.Key)
		}
		for _, e := range ep.Entries {
			version := "-" // unsigned
			if e.Version > 0 {
				version = strconv.FormatInt(e.Version, 10)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ep.Key, e.At.Local().Format(time.DateTime),
				cell(idOrDash(e.ID, "(no id)")), e.Origin, version, e.SHA256)
		}
	}
	tw.Flush()
}

// printJSON writes v indented, as the local API answered it, for scripts.
func printJSON(stdout, stderr io.Writer, command string, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "cmx-agent %s: %v\n", command, err)
		return 1
	}
	return 0
}
