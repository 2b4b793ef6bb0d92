package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/cmx-agent/cmx-agent/sealed"
)

func cmdSeal(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("seal", flag.ContinueOnError)
	to := fs.String("to", "", "the gateway's recipient, age1... (cmx-agent identity prints it; required)")
	if code, done := parse(fs, args, stdout, stderr, "seal --to RECIPIENT [FILE]",
		"print FILE's JSON value (stdin by default) sealed to the gateway: a {\"$sealed\": ...} object that\nstands for the value anywhere in a configuration (sign after sealing)"); done {
		return code
	}
	if *to == "" || fs.NArg() > 1 {
		fmt.Fprintln(stderr, "cmxctl seal: --to and at most one FILE are required")
		return 2
	}
	in, name := stdin, "stdin"
	if fs.NArg() == 1 {
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			fmt.Fprintln(stderr, "cmxctl seal:", err)
			return 2
		}
		defer f.Close()
		in, name = f, fs.Arg(0)
	}
	// The armor is larger than the value: more than MaxArmor of value could never be opened.
	value, err := io.ReadAll(io.LimitReader(in, sealed.MaxArmor+1))
	if err != nil {
		fmt.Fprintln(stderr, "cmxctl seal:", err)
		return 2
	}
	if len(value) > sealed.MaxArmor {
		fmt.Fprintf(stderr, "cmxctl seal: %s: more than %d bytes, more than an agent opens\n", name, sealed.MaxArmor)
		return 2
	}
	obj, err := sealed.Seal(*to, value)
	if err != nil {
		fmt.Fprintf(stderr, "cmxctl %s (%s)\n", err, name)
		return 2
	}
	fmt.Fprintf(stdout, "%s\n", obj)
	return 0
}
