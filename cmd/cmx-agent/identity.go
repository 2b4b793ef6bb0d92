package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"

	"github.com/cmx-agent/cmx-agent/sealed"
)

func cmdIdentity(args []string, stdout, stderr io.Writer) int {
	c := newCommand("identity", "[--config PATH]",
		"Prints the agent's age recipient (age1...), to which configurations seal values (exit 1: no identity yet or unreadable).", stderr)
	path := c.String("config", defaultConfig, configUsage)
	if code, ok := c.parseNoArgs(args, stdout); !ok {
		return code
	}
	cfg, code := loadConfig(*path, stderr)
	if cfg == nil {
		return code
	}
	// Read only: the identity is the running agent's to make, with the owner and the folder it runs
	// with; one made here by another user could not be read by the agent.
	id, err := sealed.Read(filepath.Join(cfg.Agent.StateDir, sealed.FileName))
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "cmx-agent identity: no identity in %s yet: the agent makes it at its first start\n", cfg.Agent.StateDir)
		return 1
	}
	if err != nil {
		fmt.Fprintln(stderr, "cmx-agent identity:", err)
		return 1
	}
	fmt.Fprintln(stdout, id.Recipient())
	return 0
}
