package doccheck

import (
	"flag"
	"slices"
	"strings"
	"testing"
)

func TestSubcommands_AreTheTwoSpaceIndentedWordsOfTheCommandsBlock(t *testing.T) {
	usage := "usage: x <command>\n\ncommands:\n  run    [--config PATH]\n         runs it\n  version\n\ncommon flags:\n  --broker URL\n"
	if got := Subcommands(usage); !slices.Equal(got, []string{"run", "version"}) {
		t.Errorf("Subcommands = %v, want [run version]", got)
	}
}

func TestFlags_AreReadFromPrintDefaults(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("config", "", "file")
	fs.Bool("with-outputs", false, "also the content")
	fs.String("o", "", "archive")
	var b strings.Builder
	fs.SetOutput(&b)
	fs.PrintDefaults()
	if got := Flags(b.String()); !slices.Equal(got, []string{"config", "o", "with-outputs"}) {
		t.Errorf("Flags = %v", got)
	}
}

func TestFlags_AreReadFromAUsageWithTwoDashes(t *testing.T) {
	usage := "usage: x status [--config PATH]\n\nAsks.\n\nflags:\n  --config PATH\n        the file\n  -o FILE\n        archive\n  --json\n        as JSON\n"
	if got := Flags(usage); !slices.Equal(got, []string{"config", "o", "json"}) {
		t.Errorf("Flags = %v", got)
	}
}

func TestMentions_WantsTheWholeOption(t *testing.T) {
	if Mentions("use --log-level debug", "--log") {
		t.Error("--log counted as mentioned inside --log-level")
	}
	if !Mentions("**--log** *X*", "--log") || !Mentions("[-o FILE]", "-o") || Mentions("--journal-lines", "-o") {
		t.Error("Mentions misses or invents a mention")
	}
}

func TestCheck_ReportsMissingAndUnknown(t *testing.T) {
	c := Command{Name: "x", Subs: map[string][]string{"run": {"config"}, "bundle": {"o"}}}
	doc := "## run\n**--config** *PATH*\n\n## bundle\n**--gone**\n"
	got := c.Check(doc, "## %s")
	want := []string{"x bundle: the flag -o is not mentioned", "--gone is mentioned but no subcommand of x has it"}
	if !slices.Equal(got, want) {
		t.Errorf("Check = %q, want %q", got, want)
	}
}

func TestCheckKeys_WantsEveryKeyInItsTablesSection(t *testing.T) {
	keys := map[string][]string{"": {"broker", "endpoint"}, "broker": {"servers", "keepalive"}, "endpoint": {"token"}}
	doc := "# D\n## [broker]\n**servers** = []\n:   x\n\n```\n# a comment, not a heading\n```\n**keep_alive** = \"30s\"\n\n## [[endpoint]]\n**token** = \"t\"\n"
	got := CheckKeys(doc, keys, "endpoint")
	want := []string{`broker.keepalive is not documented in "## [broker]"`, `"## [broker]" documents keep_alive, which is no key of broker`}
	if !slices.Equal(got, want) {
		t.Errorf("CheckKeys = %q, want %q", got, want)
	}
}
