package cmx

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// readFuzzSeed reads one []byte value from a file in Go's fuzz corpus format.
func readFuzzSeed(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	header, value, ok := strings.Cut(strings.TrimSuffix(string(data), "\n"), "\n")
	if !ok || header != "go test fuzz v1" || !strings.HasPrefix(value, "[]byte(") || !strings.HasSuffix(value, ")") {
		t.Fatalf("%s: not a single []byte in fuzz corpus format", path)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(value, "[]byte("), ")"))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(s)
}

// The seed corpus is meant to cover the contract's examples and every way a push is refused; this
// keeps each named seed on the path its name promises, under the fuzz target's limits.
func TestFuzzParsePushSeeds_ReachTheirPaths(t *testing.T) {
	want := map[string]string{ // seed file -> status, "" = accepted
		"spec-example-number-id":                      "",
		"spec-example-no-id":                          "",
		"id-string":                                   "",
		"id-string-digits":                            "",
		"id-string-unicode-escape":                    "",
		"id-string-escapes":                           "",
		"id-string-empty":                             "",
		"id-number-as-written":                        "",
		"id-after-entries":                            "",
		"id-duplicate-keys":                           "",
		"entries-every-type":                          "",
		"entries-whitespace":                          "",
		"entries-empty-with-whitespace":               "",
		"entries-strings-with-brackets-commas-quotes": "",
		"depth-at-limit":                              "",
		"id-string-at-limit":                          "",
		"entries-at-limit":                            "",
		"not-json":                                    "invalid payload: not JSON: invalid character 'o' in literal null (expecting 'u')",
		"not-json-empty":                              "invalid payload: not JSON: unexpected end of JSON input",
		"not-json-truncated":                          "invalid payload: not JSON: unexpected end of JSON input",
		"not-json-extra-closing":                      "invalid payload: not JSON: invalid character ']' after top-level value",
		"not-json-trailing-comma":                     "invalid payload: not JSON: invalid character '}' looking for beginning of object key string",
		"not-json-unterminated-string":                "invalid payload: not JSON: unexpected end of JSON input",
		"not-object-array":                            "invalid payload: payload must be a JSON object, got array",
		"not-object-string":                           "invalid payload: payload must be a JSON object, got string",
		"not-object-null":                             "invalid payload: payload must be a JSON object, got null",
		"not-object-number":                           "invalid payload: payload must be a JSON object, got number",
		"not-object-boolean":                          "invalid payload: payload must be a JSON object, got boolean",
		"entries-missing":                             "invalid payload: entries missing",
		"entries-missing-id-7":                        "invalid payload: entries missing",
		"entries-object":                              "invalid payload: entries must be an array, got object",
		"entries-string":                              "invalid payload: entries must be an array, got string",
		"entries-number":                              "invalid payload: entries must be an array, got number",
		"entries-null":                                "invalid payload: entries must be an array, got null",
		"entries-boolean":                             "invalid payload: entries must be an array, got boolean",
		"id-null":                                     "invalid payload: id must be a string or a number, got null",
		"id-bool":                                     "invalid payload: id must be a string or a number, got boolean",
		"id-object":                                   "invalid payload: id must be a string or a number, got object",
		"id-array":                                    "invalid payload: id must be a string or a number, got array",
		"oversized":                                   "invalid payload: payload too large: 4097 bytes, limit 4096",
		"oversized-valid-json":                        "invalid payload: payload too large: 4097 bytes, limit 4096",
		"too-deep":                                    "invalid payload: nesting deeper than 16 levels",
		"too-deep-invalid":                            "invalid payload: nesting deeper than 16 levels",
		"id-string-too-long":                          "invalid payload: id longer than 32 bytes",
		"id-number-too-long":                          "invalid payload: id longer than 32 bytes",
		"too-many-entries":                            "invalid payload: too many entries: 17, limit 16",
		"id-surrogate-pair":                           "",
		"id-invalid-utf8":                             "invalid payload: id is not valid Unicode text",
		"id-lone-surrogate":                           "invalid payload: id is not valid Unicode text",
	}
	lim := Limits{MaxPayload: fuzzMaxPayload, MaxDepth: fuzzMaxDepth, MaxIDLen: fuzzMaxIDLen, MaxEntries: fuzzMaxEntries}
	for name, wantStatus := range want {
		t.Run(name, func(t *testing.T) {
			payload := readFuzzSeed(t, filepath.Join("testdata", "fuzz", "FuzzParsePush", name))
			_, err := ParsePush(payload, lim)
			var ie *InputError
			switch {
			case wantStatus == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case wantStatus != "" && !errors.As(err, &ie):
				t.Fatalf("got %v, want an *InputError with %q", err, wantStatus)
			case wantStatus != "" && ie.Status() != wantStatus:
				t.Fatalf("Status() = %q, want %q", ie.Status(), wantStatus)
			}
		})
	}
}
