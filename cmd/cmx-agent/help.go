package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
)

// command is a subcommand's flag set with what its --help prints: the synopsis after
// "cmx-agent NAME" (flags and positional arguments) and a line of what it does.
type command struct {
	*flag.FlagSet
	synopsis string
	what     string
	stderr   io.Writer
}

// longFlagRE matches a flag of more than one letter written with one dash.
var longFlagRE = regexp.MustCompile(` -([A-Za-z0-9][A-Za-z0-9-]+)`)

// newCommand returns the flag set of subcommand name. Parse errors go to stderr; --help and -h
// are answered by parse on stdout.
func newCommand(name, synopsis, what string, stderr io.Writer) *command {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {} // parse prints the usage itself, on the stream that fits
	c := &command{FlagSet: fs, synopsis: synopsis, what: what, stderr: stderr}
	// The flag package prints its own error before returning it; parse prints it better.
	fs.SetOutput(io.Discard)
	return c
}

// parse parses args. ok is false when the command must end at once with code: 0 after --help
// (the usage on stdout), 2 for a bad flag (the problem and the synopsis on stderr, as the flag
// package printed the problem there).
func (c *command) parse(args []string, stdout io.Writer) (code int, ok bool) {
	err := c.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		c.help(stdout)
		return 0, false
	case err != nil:
		// The flag package names a flag with one dash whichever way it was typed; long ones get two,
		// as everywhere else.
		fmt.Fprintf(c.stderr, "cmx-agent %s: %s\n", c.Name(), longFlagRE.ReplaceAllString(err.Error(), " --$1"))
		return c.usageError(), false
	}
	return 0, true
}

// parseNoArgs is parse for a command that takes no positional argument.
func (c *command) parseNoArgs(args []string, stdout io.Writer) (code int, ok bool) {
	if code, ok := c.parse(args, stdout); !ok {
		return code, false
	}
	if c.NArg() > 0 {
		fmt.Fprintf(c.stderr, "cmx-agent %s: unexpected argument %q\n", c.Name(), c.Arg(0))
		return c.usageError(), false
	}
	return 0, true
}

// usageError prints the synopsis on stderr after a usage problem the caller printed.
func (c *command) usageError() int {
	fmt.Fprintf(c.stderr, "%s\n(cmx-agent %s --help says more)\n", c.usageLine(), c.Name())
	return 2
}

func (c *command) usageLine() string {
	return strings.TrimSpace("usage: cmx-agent " + c.Name() + " " + c.synopsis)
}

// help writes the usage: synopsis, what the command does, and each flag with two dashes (the flag
// package takes both forms; two is what the man page and the completions use).
func (c *command) help(w io.Writer) {
	fmt.Fprintf(w, "%s\n\n%s\n", c.usageLine(), c.what)
	n := 0
	c.VisitAll(func(f *flag.Flag) {
		if n == 0 {
			fmt.Fprint(w, "\nflags:\n")
		}
		n++
		name, usage := flag.UnquoteUsage(f)
		dashes := "--"
		if len(f.Name) == 1 {
			dashes = "-"
		}
		fmt.Fprintf(w, "  %s%s", dashes, f.Name)
		if name != "" {
			fmt.Fprintf(w, " %s", name)
		}
		fmt.Fprintf(w, "\n        %s", usage)
		if f.DefValue != "" && f.DefValue != "false" {
			fmt.Fprintf(w, " (default %s)", f.DefValue)
		}
		fmt.Fprintln(w)
	})
}
