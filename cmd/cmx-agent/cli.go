package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
)

// apiTimeout bounds a CLI call to the local API, so a wedged agent cannot hang a script.
const apiTimeout = 10 * time.Second

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", defaultConfig, "configuration file")
	asJSON := fs.Bool("json", false, "print the agent's answer as JSON")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return 2
	}
	cfg, code := loadConfig(*path, stderr)
	if cfg == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	st, err := agent.NewAPIClient(cfg.Agent.Socket).Status(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "cmx-agent status:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			fmt.Fprintln(stderr, "cmx-agent status:", err)
			return 1
		}
		return 0
	}
	printStatus(stdout, st)
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
			last = idOrDash(e.LastID, "(no id)") + ": " + e.LastStatus
		}
		if e.Damaged != "" {
			// The id and times were in the record; only what was applied is known (its hash).
			applied, at, last = "?", "?", "damaged: "+e.Damaged
		}
		if !e.ApplyingSince.IsZero() {
			last += fmt.Sprintf(" (applying %s for %s)", idOrDash(e.ApplyingID, "(no id)"), time.Since(e.ApplyingSince).Round(time.Second))
		} else if e.Waiting {
			last += " (newer one waiting)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", e.Key, applied, at, last, e.Pending, e.Output)
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

func idOrDash(id, none string) string {
	if id == "" {
		return none
	}
	return id
}

func cmdSync(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sync", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", defaultConfig, "configuration file")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return 2
	}
	cfg, code := loadConfig(*path, stderr)
	if cfg == nil {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	res, err := agent.NewAPIClient(cfg.Agent.Socket).Sync(ctx)
	if err != nil {
		var ae *agent.APIError
		if errors.As(err, &ae) {
			fmt.Fprintln(stderr, "cmx-agent sync: the agent answered:", ae.Message)
		} else {
			fmt.Fprintln(stderr, "cmx-agent sync:", err)
		}
		return 1
	}
	fmt.Fprintf(stdout, "latest configuration requested for %d endpoints\n", res.Requested)
	return 0
}
