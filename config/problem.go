package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Problem is one thing wrong with a configuration file, located at a line
// when the line can be known. A warning is a Problem that does not make the
// file invalid: something that works with one broker and not with another.
type Problem struct {
	Path    string // the file as named by the caller of Load or Parse
	Line    int    // 1-based; 0 = unknown
	Msg     string
	Warning bool // the file is still valid; printed as "warning: ..."
	// Err is the underlying cause when there is one (for example the
	// *fs.PathError of an unreadable file), so that callers can use
	// errors.Is on the Problems that carries it. Usually nil.
	Err error
}

// String formats the problem the way `cmx-agent check` prints it:
// "PATH:LINE: message", or "PATH: message" when the line is unknown; a
// warning's message starts with "warning: ".
func (p Problem) String() string {
	if p.Warning {
		p.Msg = "warning: " + p.Msg
	}
	switch {
	case p.Path == "" && p.Line > 0:
		return fmt.Sprintf("line %d: %s", p.Line, p.Msg)
	case p.Path == "":
		return p.Msg
	case p.Line > 0:
		return fmt.Sprintf("%s:%d: %s", p.Path, p.Line, p.Msg)
	default:
		return fmt.Sprintf("%s: %s", p.Path, p.Msg)
	}
}

// Problems is every problem found in one configuration file, in file order
// (problems without a line come last). Load and Parse return it as their
// error; get it back with errors.As.
type Problems []Problem

// Error joins the problems, one a line.
func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes the underlying causes to errors.Is and errors.As.
func (ps Problems) Unwrap() []error {
	var errs []error
	for _, p := range ps {
		if p.Err != nil {
			errs = append(errs, p.Err)
		}
	}
	return errs
}

// sortByLine puts problems in file order. Problems without a line are mostly
// about something missing, which a reader looks for after the file's own
// mistakes, so they go last. The sort is stable so that problems on one line
// keep the order in which they were found.
func (ps Problems) sortByLine() {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		la, lb := a.Line, b.Line
		if la == 0 {
			la = int(^uint(0) >> 1)
		}
		if lb == 0 {
			lb = int(^uint(0) >> 1)
		}
		return cmp.Compare(la, lb)
	})
}
