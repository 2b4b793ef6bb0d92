package agent

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// jsonFields lists the JSON names of t's fields as paths: "a", and "a[].b" for the fields of the
// structs in a slice a (time.Time is a value, not a struct to enter).
func jsonFields(t reflect.Type, prefix string) []string {
	var out []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		path := prefix + name
		out = append(out, path)
		if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct && f.Type.Elem() != reflect.TypeFor[time.Time]() {
			out = append(out, jsonFields(f.Type.Elem(), path+"[].")...)
		}
	}
	return out
}

// documentedFields lists the first column of the first table after heading in doc.
func documentedFields(t *testing.T, doc, heading string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, heading)
	if !ok {
		t.Fatalf("docs/operations.md has no %q", heading)
	}
	row := regexp.MustCompile("^\\| `([^`]+)` \\|")
	var out []string
	inTable := false
	for line := range strings.Lines(rest) {
		m := row.FindStringSubmatch(line)
		switch {
		case m != nil:
			inTable = true
			out = append(out, m[1])
		case inTable && !strings.HasPrefix(line, "|"):
			return out
		}
	}
	return out
}

// Every field GET /v1/status and GET /v1/history answer is in docs/operations.md's tables, and
// nothing there is gone from the JSON.
func TestDocs_TheLocalAPIFieldsTablesMatchTheJSON(t *testing.T) {
	b, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, c := range []struct {
		heading string
		typ     reflect.Type
	}{
		{"`GET /v1/status` answers", reflect.TypeFor[Status]()},
		{"`GET /v1/history` answers", reflect.TypeFor[History]()},
	} {
		real := jsonFields(c.typ, "")
		documented := documentedFields(t, doc, c.heading)
		slices.Sort(real)
		slices.Sort(documented)
		if !slices.Equal(real, documented) {
			t.Errorf("%s: documented %q\nwant the JSON's %q", c.heading, documented, real)
		}
	}
}
