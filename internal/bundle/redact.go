package bundle

import (
	"bytes"
	"net/url"
	"regexp"
	"slices"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
)

// The placeholders that stand where something was left out.
const (
	redactedUnknown = "<redacted: not a key cmx-agent knows>"
	redactedValue   = "<redacted: not a plain value>"
	redactedURL     = "<redacted: not a URL>"
	redactedSecret  = "<redacted>"
)

// redactConfig returns the parsed configuration file with only known keys and plain values, and
// every server URL's password replaced. Comments are gone with the parse, which is the point: a
// comment may hold anything.
func redactConfig(raw map[string]any) map[string]any {
	// Only the keys the config package reads keep their values: any other key's value (a mistyped
	// `password = "..."` in an invalid file, say) is left out.
	known := config.Keys()
	out := map[string]any{}
	for k, v := range raw {
		fields, ok := known[k]
		switch {
		case !slices.Contains(known[""], k):
			out[k] = redactedUnknown
		case !ok || len(fields) == 0:
			out[k] = plainValue(v)
		default:
			out[k] = redactTables(k, fields, v)
		}
	}
	return out
}

// redactTables redacts a table ([broker]) or an array of tables ([[endpoint]]).
func redactTables(name string, fields []string, v any) any {
	switch t := v.(type) {
	case map[string]any:
		return redactTable(name, fields, t)
	case []map[string]any:
		out := make([]map[string]any, len(t))
		for i, m := range t {
			out[i] = redactTable(name, fields, m)
		}
		return out
	}
	return redactedValue
}

func redactTable(name string, fields []string, m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		switch {
		case !slices.Contains(fields, k):
			out[k] = redactedUnknown
		case name == "broker" && k == "servers":
			out[k] = redactServers(v)
		default:
			out[k] = plainValue(v)
		}
	}
	return out
}

// plainValue keeps strings, numbers, booleans, times and arrays of them; a table where a plain
// value belongs is left out whole.
func plainValue(v any) any {
	switch t := v.(type) {
	case string, bool, int64, float64, time.Time:
		return t
	case []any:
		out := make([]any, len(t))
		for i, e := range t {
			out[i] = plainValue(e)
		}
		return out
	}
	return redactedValue
}

func redactServers(v any) any {
	list, ok := v.([]any)
	if !ok {
		return plainValue(v)
	}
	out := make([]any, len(list))
	for i, e := range list {
		s, ok := e.(string)
		if !ok {
			out[i] = plainValue(e)
			continue
		}
		u, err := url.Parse(s)
		if err != nil {
			out[i] = redactedURL // an unparsable URL may still hold a password
			continue
		}
		out[i] = u.Redacted()
	}
	return out
}

// serverPasswords returns the passwords written into server URLs, as written and decoded.
func serverPasswords(raw map[string]any) []string {
	broker, _ := raw["broker"].(map[string]any)
	list, _ := broker["servers"].([]any)
	var out []string
	for _, e := range list {
		s, _ := e.(string)
		if u, err := url.Parse(s); err == nil && u.User != nil {
			if p, ok := u.User.Password(); ok {
				out = append(out, p)
			}
		}
		// The text between "user:" and "@" as written, escaped or not even parsable.
		if m := userinfoRE.FindStringSubmatch(s); m != nil {
			out = append(out, m[2])
		}
	}
	return out
}

var (
	// userinfoRE matches a password in a URL: scheme://user:PASSWORD@.
	userinfoRE = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):([^@/\s]+)@`)
	// privateKeyRE matches a PEM private key, whatever its kind.
	privateKeyRE = regexp.MustCompile(`(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----`)
)

// scrubber removes known secrets from every file before it enters the archive: the last line of
// defence behind leaving secrets out, for text the bundle does not write itself (the agent's
// answers, the journal, problems that quote a value, outputs with --with-outputs).
type scrubber struct {
	secrets [][]byte // longest first, so a secret containing another is replaced whole
}

func newScrubber(secrets []string) *scrubber {
	s := &scrubber{}
	for _, v := range secrets {
		if v != "" && !slices.ContainsFunc(s.secrets, func(b []byte) bool { return string(b) == v }) {
			s.secrets = append(s.secrets, []byte(v))
		}
	}
	slices.SortFunc(s.secrets, func(a, b []byte) int { return len(b) - len(a) })
	return s
}

func (s *scrubber) clean(data []byte) []byte {
	for _, secret := range s.secrets {
		data = bytes.ReplaceAll(data, secret, []byte(redactedSecret))
	}
	data = userinfoRE.ReplaceAll(data, []byte("${1}:xxxxx@"))
	return privateKeyRE.ReplaceAll(data, []byte("<redacted: private key>"))
}
