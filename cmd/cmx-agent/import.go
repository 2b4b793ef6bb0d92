package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
)

// importTimeout bounds an import: the agent answers within its own wait (25 s) for the results.
const importTimeout = 40 * time.Second

// maxImportFile bounds one file read for import; the agent refuses any configuration over its
// max_payload (at most 256 MiB) anyway.
const maxImportFile = 64 << 20

// cmdImport applies signed configurations from files through the running agent (CONTRACT
// section 6, "Offline import"): one line per configuration, exit 0 when all are ok.
func cmdImport(args []string, stdout, stderr io.Writer) int {
	fs := newCommand("import", "[--config PATH | --socket PATH] FILE...",
		"Applies signed configurations from files (one JWS, or a JSON array of them) through the running agent, one line per configuration (exit 0: all ok).", stderr)
	path, socket := agentFlags(fs)
	if code, ok := fs.parse(args, stdout); !ok {
		return code
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "cmx-agent import: at least one FILE of signed configurations is required")
		return fs.usageError()
	}
	var envs []json.RawMessage
	var from []string // the file each configuration came from, for lines the agent cannot label
	for _, name := range fs.Args() {
		list, err := readSigned(name)
		if err != nil {
			fmt.Fprintln(stderr, "cmx-agent import:", err)
			return 2
		}
		for range list {
			from = append(from, name)
		}
		envs = append(envs, list...)
	}
	sock, code := agentSocket(fs, *path, *socket)
	if sock == "" {
		return code
	}
	res, err := askAgent(sock, importTimeout, func(c *agent.APIClient, ctx context.Context) (agent.ImportResult, error) {
		return c.Import(ctx, envs)
	})
	if err != nil {
		fmt.Fprintln(stderr, "cmx-agent import:", apiFailure(sock, err))
		return 1
	}
	code = 0
	for i, r := range res.Results {
		label := fmt.Sprintf("%s version %d", r.Endpoint, r.Version)
		if r.Endpoint == "" && i < len(from) {
			label = from[i] // not verified: nothing of its payload is worth showing
		}
		fmt.Fprintf(stdout, "%s: %s\n", label, r.Status)
		if !r.OK {
			code = 1
		}
	}
	if len(res.Results) != len(envs) {
		fmt.Fprintf(stderr, "cmx-agent import: the agent answered %d results for %d configurations\n", len(res.Results), len(envs))
		return 1
	}
	return code
}

// readSigned reads a file holding one signed configuration (a JSON object) or a JSON array of
// them. What they hold is the agent's to judge: it refuses anything unsigned.
func readSigned(name string) ([]json.RawMessage, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxImportFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(data) > maxImportFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, maxImportFile)
	}
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '[' {
		var list []json.RawMessage
		if err := json.Unmarshal(data, &list); err != nil {
			return nil, fmt.Errorf("%s: not a JSON array of signed configurations: %w", name, err)
		}
		if len(list) == 0 {
			return nil, fmt.Errorf("%s: an empty array", name)
		}
		return list, nil
	}
	if !json.Valid(data) {
		return nil, fmt.Errorf("%s: not JSON (want a signed configuration, as cmxctl sign prints it, or an array of them)", name)
	}
	return []json.RawMessage{data}, nil
}
