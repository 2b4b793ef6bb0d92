package main

import (
	"context"
	"flag"
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
	fs := flag.NewFlagSet("bundle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", defaultConfig, "configuration file")
	out := fs.String("o", "", "archive to write (default cmx-agent-bundle-HOST-TIME.tar.gz in the current folder)")
	withOutputs := fs.Bool("with-outputs", false, "copy the outputs' content too (they may hold the devices' secrets)")
	lines := fs.Int("journal-lines", defaultJournalLines, "last lines of the unit's journal to add; 0 = none")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return 2
	}
	if *out == "" {
		host, _ := os.Hostname()
		*out = fmt.Sprintf("cmx-agent-bundle-%s-%s.tar.gz", host, time.Now().UTC().Format("20060102T150405Z"))
	}
	err := bundle.Write(context.Background(), bundle.Options{
		ConfigPath:   *path,
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
