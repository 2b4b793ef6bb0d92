package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/bundle"
)

// defaultJournalLines is enough for the last few reconnects and applies of a busy gateway.
const defaultJournalLines = 500

func cmdBundle(args []string, stdout, stderr io.Writer) int {
	c := newCommand("bundle", "[--config PATH] [--socket PATH] [-o FILE] [--with-outputs] [--journal-lines N]",
		"Writes a support bundle (.tar.gz, mode 0600) for a ticket, without passwords, keys or file content.", stderr)
	path := c.String("config", defaultConfig, "the agent's configuration file `PATH`")
	socket := c.String("socket", "", "ask the agent at the socket `PATH` instead of the configuration's")
	out := c.String("o", "", "the archive `FILE` to write (default cmx-agent-bundle-HOST-TIME.tar.gz in the current folder)")
	withOutputs := c.Bool("with-outputs", false, "copy the outputs' content too (they may hold the devices' secrets)")
	lines := c.Int("journal-lines", defaultJournalLines, "last `N` lines of the unit's journal to add; 0 = none")
	if code, ok := c.parseNoArgs(args, stdout); !ok {
		return code
	}
	if *out == "" {
		host, _ := os.Hostname()
		*out = fmt.Sprintf("cmx-agent-bundle-%s-%s.tar.gz", host, time.Now().UTC().Format("20060102T150405Z"))
	}
	err := bundle.Write(context.Background(), bundle.Options{
		ConfigPath:   *path,
		Socket:       *socket,
		Out:          *out,
		WithOutputs:  *withOutputs,
		JournalLines: *lines,
		Version:      versionLine(),
	})
	if err != nil {
		fmt.Fprintln(stderr, "cmx-agent bundle:", err)
		return 1
	}
	fmt.Fprintln(stdout, *out)
	return 0
}

func versionLine() string {
	return fmt.Sprintf("cmx-agent %s (commit %s, %s)", version, commitID(), runtime.Version())
}
