// Package doccheck compares what the manual pages (docs/man/*.md) and the shell completions
// (completion/) say with the commands' real flag sets and the configuration's real keys. The
// commands' and the config package's tests use it, so that a flag or key added without its
// documentation, or documentation left behind by a removed one, fails a test.
package doccheck

import (
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// Command is a command's real interface: its subcommands and each one's flags.
type Command struct {
	Name string
	Subs map[string][]string // subcommand → flag names, as the flag package knows them
}

// Real is the command as its dispatcher and flag sets define it: the subcommands of its usage
// text, each with the flags its -h lists. help runs the command with "SUB -h" and returns the
// help it printed.
func Real(name, usage string, help func(sub string) string) Command {
	c := Command{Name: name, Subs: map[string][]string{}}
	for _, sub := range Subcommands(usage) {
		c.Subs[sub] = Flags(help(sub))
	}
	return c
}

// Test fails t with every problem Check finds in each file.
func (c Command) Test(t testing.TB, heading string, others []string, paths ...string) {
	t.Helper()
	for _, path := range paths {
		doc, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range c.Check(string(doc), heading, others...) {
			t.Errorf("%s: %s", path, p)
		}
	}
}

// Subcommands returns the commands of a usage text's "commands:" block: the first word of every
// line indented by exactly two spaces.
func Subcommands(usage string) []string {
	_, block, _ := strings.Cut(usage, "commands:\n")
	block, _, _ = strings.Cut(block, "\n\n")
	var subs []string
	for line := range strings.Lines(block) {
		if strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "   ") {
			subs = append(subs, strings.Fields(line)[0])
		}
	}
	return subs
}

// defaultsRE matches a flag's first line in flag.PrintDefaults output, "  -name type", or in a
// help that writes flags as operators type them, "  --name type".
var defaultsRE = regexp.MustCompile(`(?m)^  --?([A-Za-z0-9][A-Za-z0-9-]*)`)

// Flags returns the flag names in the output of flag.FlagSet.PrintDefaults, which is what a
// command prints for -h.
func Flags(defaults string) []string {
	var names []string
	for _, m := range defaultsRE.FindAllStringSubmatch(defaults, -1) {
		names = append(names, m[1])
	}
	return names
}

// Option is how a flag is written on the command line in the documentation: -o for one letter,
// --name otherwise (the flag package takes both forms).
func Option(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// Mentions reports whether text mentions the option as a whole word: --log does not count as a
// mention inside --log-level.
func Mentions(text, option string) bool {
	re := regexp.MustCompile(`(^|[^A-Za-z0-9-])` + regexp.QuoteMeta(option) + `($|[^A-Za-z0-9-])`)
	return re.MatchString(text)
}

// longRE matches a long option mentioned anywhere.
var longRE = regexp.MustCompile(`(?:^|[^A-Za-z0-9-])(--[a-z][a-z0-9-]*)`)

// LongOptions returns the long options (--name) text mentions, each once.
func LongOptions(text string) []string {
	var out []string
	for _, m := range longRE.FindAllStringSubmatch(text, -1) {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// Check returns what doc (a man page's Markdown or a completion script) gets wrong about c: a
// subcommand or a flag it does not mention, and a long option it mentions that no subcommand has.
// others lists options of other programs the text may mention (journalctl's --no-pager, say).
// heading, when set, is the Markdown form each subcommand's section must take, with %s for the
// subcommand ("## %s"); otherwise the subcommand need only be mentioned.
func (c Command) Check(doc, heading string, others ...string) []string {
	var probs []string
	real := map[string]bool{}
	for _, sub := range slices.Sorted(maps.Keys(c.Subs)) {
		if heading != "" {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(fmt.Sprintf(heading, sub)) + `( |$)`).MatchString(doc) {
				probs = append(probs, fmt.Sprintf("no section %q for the subcommand %s", fmt.Sprintf(heading, sub), sub))
			}
		} else if !regexp.MustCompile(`\b` + regexp.QuoteMeta(sub) + `\b`).MatchString(doc) {
			probs = append(probs, fmt.Sprintf("the subcommand %s is not mentioned", sub))
		}
		for _, f := range c.Subs[sub] {
			real[Option(f)] = true
			if !Mentions(doc, Option(f)) {
				probs = append(probs, fmt.Sprintf("%s %s: the flag %s is not mentioned", c.Name, sub, Option(f)))
			}
		}
	}
	for _, o := range LongOptions(doc) {
		if !real[o] && !slices.Contains(others, o) {
			probs = append(probs, fmt.Sprintf("%s is mentioned but no subcommand of %s has it", o, c.Name))
		}
	}
	return probs
}

// termRE matches a definition term of the configuration page: a line starting with **key**.
var termRE = regexp.MustCompile(`(?m)^\*\*([a-z_]+)\*\*`)

// CheckKeys returns what doc (the configuration file's man page) gets wrong about keys (as
// config.Keys returns them): a table without its section ("## [broker]", or "## [[endpoint]]"
// for an array of tables), a key its table's section does not define as a term (a line starting
// with **key**), and a term that is no key of that table.
func CheckKeys(doc string, keys map[string][]string, arrays ...string) []string {
	var probs []string
	for _, table := range keys[""] {
		heading := "## [" + table + "]"
		if slices.Contains(arrays, table) {
			heading = "## [[" + table + "]]"
		}
		sec, ok := Section(doc, heading)
		if !ok {
			probs = append(probs, fmt.Sprintf("no section %q", heading))
			continue
		}
		var terms []string
		for _, m := range termRE.FindAllStringSubmatch(sec, -1) {
			terms = append(terms, m[1])
		}
		for _, k := range keys[table] {
			if !slices.Contains(terms, k) {
				probs = append(probs, fmt.Sprintf("%s.%s is not documented in %q", table, k, heading))
			}
		}
		for _, term := range terms {
			if !slices.Contains(keys[table], term) {
				probs = append(probs, fmt.Sprintf("%q documents %s, which is no key of %s", heading, term, table))
			}
		}
	}
	return probs
}

// Section returns the part of a Markdown text after the line that is heading, up to the next
// heading of the same or a higher level.
func Section(md, heading string) (string, bool) {
	lines := strings.SplitAfter(md, "\n")
	for i, l := range lines {
		if strings.TrimRight(l, "\n") != heading {
			continue
		}
		var b strings.Builder
		fenced := false // a "# comment" in a code block is no heading
		for _, next := range lines[i+1:] {
			if strings.HasPrefix(next, "```") {
				fenced = !fenced
			}
			if n := headingLevel(next); !fenced && n > 0 && n <= headingLevel(heading) {
				break
			}
			b.WriteString(next)
		}
		return b.String(), true
	}
	return "", false
}

// headingLevel is the number of # of a Markdown heading line, 0 for any other line.
func headingLevel(line string) int {
	n := len(line) - len(strings.TrimLeft(line, "#"))
	if n == 0 || n == len(line) || line[n] != ' ' {
		return 0
	}
	return n
}
