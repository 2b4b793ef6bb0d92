package cmx

import (
	"bytes"
	"errors"
	"runtime"
	"strings"
	"testing"
)

const mib = 1 << 20

// mustParsePush parses a push that the test expects to be well formed.
func mustParsePush(t *testing.T, payload string, lim Limits) Push {
	t.Helper()
	p, err := ParsePush([]byte(payload), lim)
	if err != nil {
		t.Fatalf("ParsePush(%.200q) failed: %v", payload, err)
	}
	return p
}

// inputError parses a push that the test expects to be refused and returns the *InputError.
func inputError(t *testing.T, payload []byte, lim Limits) *InputError {
	t.Helper()
	p, err := ParsePush(payload, lim)
	if err == nil {
		t.Fatalf("ParsePush(%.200q) = %+v, nil; want an error", payload, p)
	}
	var ie *InputError
	if !errors.As(err, &ie) {
		t.Fatalf("ParsePush(%.200q) error %T %v, want *InputError", payload, err, err)
	}
	if p.Entries != nil || !p.ID.IsZero() {
		t.Errorf("ParsePush(%.200q) returned %+v alongside its error, want the zero Push", payload, p)
	}
	return ie
}

func TestParsePush_SpecExamples(t *testing.T) {
	tests := []struct {
		name        string
		payload     string
		wantKey     string
		wantEntries string
	}{
		{
			name: "number id and entries of several types",
			payload: `{
  "id": 42,
  "entries": [
    { "key": "value" },
    15,
    [ "an", "array", 13 ]
  ]
}`,
			wantKey: "42",
			wantEntries: `[
    { "key": "value" },
    15,
    [ "an", "array", 13 ]
  ]`,
		},
		{
			name: "no id",
			payload: `{
  "entries": [ 15 ]
}`,
			wantKey:     "",
			wantEntries: `[ 15 ]`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParsePush(t, tt.payload, DefaultLimits(mib))
			if p.ID.Key() != tt.wantKey {
				t.Errorf("ID.Key() = %q, want %q", p.ID.Key(), tt.wantKey)
			}
			if string(p.Entries) != tt.wantEntries {
				t.Errorf("Entries = %q, want %q", p.Entries, tt.wantEntries)
			}
		})
	}
}

func TestParsePush_ID(t *testing.T) {
	tests := []struct {
		name     string
		payload  string
		wantKey  string
		wantText string
		wantZero bool
	}{
		{"number", `{"id":42,"entries":[]}`, `42`, `42`, false},
		{"number as written", `{"id": 1.50, "entries":[]}`, `1.50`, `1.50`, false},
		{"negative number with exponent", `{"id":-4.2e1,"entries":[]}`, `-4.2e1`, `-4.2e1`, false},
		{"string", `{"id":"v1","entries":[]}`, `"v1"`, `v1`, false},
		{"string of digits", `{"id":"42","entries":[]}`, `"42"`, `42`, false},
		{"empty string is an id", `{"id":"","entries":[]}`, `""`, ``, false},
		{"string with unicode escape", `{"id":"\u0041","entries":[]}`, `"A"`, `A`, false},
		{"string with escaped quote", `{"id":"a\"b","entries":[]}`, `"a\"b"`, `a"b`, false},
		{"string with escaped slash", `{"id":"a\/b","entries":[]}`, `"a/b"`, `a/b`, false},
		{"string with html characters kept", `{"id":"<a&b>","entries":[]}`, `"<a&b>"`, `<a&b>`, false},
		{"string with newline escape", `{"id":"a\nb","entries":[]}`, `"a\nb"`, "a\nb", false},
		{"string with non-ASCII", `{"id":"é","entries":[]}`, `"é"`, `é`, false},
		{"string with a surrogate pair", `{"id":"\ud83d\uDE00","entries":[]}`, `"😀"`, `😀`, false},
		{"string with an escaped replacement character", `{"id":"\ufffd","entries":[]}`, "\"\uFFFD\"", "\uFFFD", false},
		{"string with a replacement character", "{\"id\":\"\uFFFD\",\"entries\":[]}", "\"\uFFFD\"", "\uFFFD", false},
		{"missing", `{"entries":[]}`, ``, ``, true},
		{"id after entries", `{"entries":[1],"id":7}`, `7`, `7`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParsePush(t, tt.payload, DefaultLimits(mib))
			if got := p.ID.Key(); got != tt.wantKey {
				t.Errorf("ID.Key() = %q, want %q", got, tt.wantKey)
			}
			if got := p.ID.Text(); got != tt.wantText {
				t.Errorf("ID.Text() = %q, want %q", got, tt.wantText)
			}
			if got := p.ID.IsZero(); got != tt.wantZero {
				t.Errorf("ID.IsZero() = %v, want %v", got, tt.wantZero)
			}
		})
	}
}

func TestParsePush_IDsAreTyped(t *testing.T) {
	key := func(payload string) string {
		return mustParsePush(t, payload, DefaultLimits(mib)).ID.Key()
	}
	if a, b := key(`{"id":"\u0041","entries":[]}`), key(`{"id":"A","entries":[]}`); a != b {
		t.Errorf(`"\u0041" and "A" have keys %q and %q, want the same id`, a, b)
	}
	if a, b := key(`{"id":42,"entries":[]}`), key(`{"id":"42","entries":[]}`); a == b {
		t.Errorf(`42 and "42" both have key %q, want different ids`, a)
	}
	if a, b := key(`{"id":"\u00e9","entries":[]}`), key(`{"id":"é","entries":[]}`); a != b {
		t.Errorf(`"\u00e9" and "é" have keys %q and %q, want the same id`, a, b)
	}
}

func TestParsePush_EntriesOfEveryJSONType(t *testing.T) {
	const entries = `[{"key":"value"},{},15,-1.5e3,0,"text","",true,false,null,[],["an","array",13],[[[]]]]`
	p := mustParsePush(t, `{"id":1,"entries":`+entries+`}`, DefaultLimits(mib))
	if string(p.Entries) != entries {
		t.Fatalf("Entries = %s, want %s", p.Entries, entries)
	}
}

func TestParsePush_KeepsEntriesExactlyAsReceived(t *testing.T) {
	tests := []struct {
		name, entries string
	}{
		{"empty", `[]`},
		{"empty with whitespace", "[ \n\t\r ]"},
		{"whitespace between elements", "[ 1 ,\n\t2 ,  { \"a\" : [ 3 ] } ]"},
		{"escapes left as written", `["\u0041", "\/", "\"", "\\", "\ud83d\ude00"]`},
		{"numbers as written", `[1.50, 1e3, 1E+03, -0, 0.0]`},
		{"keys in the order sent, duplicates kept", `[{"b":1,"a":2,"b":3}]`},
		{"non-ASCII unescaped", `["ünïcödé", "😀"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			payload := "{ \"id\" : \"x\" ,\n \"entries\" :\t" + tt.entries + " \n}"
			p := mustParsePush(t, payload, DefaultLimits(mib))
			if string(p.Entries) != tt.entries {
				t.Fatalf("Entries = %q, want %q", p.Entries, tt.entries)
			}
		})
	}
}

func TestParsePush_DoesNotCopyTheEntries(t *testing.T) {
	// A 1 MiB configuration must not cost another MiB on a gateway with little memory: the entries
	// stay where they are in the payload.
	entries := "[" + strings.Repeat(`{"k":"v"},`, mib/10) + `{"k":"v"}]`
	payload := []byte(`{"id":1,"entries":` + entries + `}`)
	lim := DefaultLimits(2 * mib)
	lim.MaxEntries = 0
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	p, err := ParsePush(payload, lim)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if string(p.Entries) != entries {
		t.Fatalf("Entries = %.40q…, want the payload's entries", p.Entries)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
		t.Errorf("parsing a %d-byte push allocated %d bytes, want under 64 KiB", len(payload), n)
	}
}

func TestParsePush_RefusesBadInput(t *testing.T) {
	tests := []struct {
		name       string
		payload    string
		wantStatus string
		wantIDKey  string // the id the error keeps, "" when none could be read
	}{
		// not JSON
		{"empty payload", ``, "invalid payload: not JSON: unexpected end of JSON input", ""},
		{"only whitespace", " \n", "invalid payload: not JSON: unexpected end of JSON input", ""},
		{"text", `not json`, "invalid payload: not JSON: invalid character 'o' in literal null (expecting 'u')", ""},
		{"truncated object", `{"id":1,"entries":[1]`, "invalid payload: not JSON: unexpected end of JSON input", ""},
		{"extra closing bracket", `{"id":1,"entries":[1]}]`, "invalid payload: not JSON: invalid character ']' after top-level value", ""},
		{"stray closing brace", `}`, "invalid payload: not JSON: invalid character '}' looking for beginning of value", ""},
		{"trailing comma", `{"entries":[1],}`, "invalid payload: not JSON: invalid character '}' looking for beginning of object key string", ""},
		{"single quotes", `{'entries':[1]}`, "invalid payload: not JSON: invalid character '\\'' looking for beginning of object key string", ""},
		{"two objects", `{"entries":[]} {"entries":[]}`, "invalid payload: not JSON: invalid character '{' after top-level value", ""},
		// not an object
		{"array", `[{"id":1,"entries":[]}]`, "invalid payload: payload must be a JSON object, got array", ""},
		{"array with whitespace", " \n [1] ", "invalid payload: payload must be a JSON object, got array", ""},
		{"string", `"entries"`, "invalid payload: payload must be a JSON object, got string", ""},
		{"null", `null`, "invalid payload: payload must be a JSON object, got null", ""},
		{"null with whitespace", ` null `, "invalid payload: payload must be a JSON object, got null", ""},
		{"number", `42`, "invalid payload: payload must be a JSON object, got number", ""},
		{"boolean", `true`, "invalid payload: payload must be a JSON object, got boolean", ""},
		// entries missing
		{"entries missing, no id", `{}`, "invalid payload: entries missing", ""},
		{"entries missing, number id kept", `{"id":7}`, "invalid payload: entries missing", "7"},
		{"entries missing, string id kept", `{"id":"v7"}`, "invalid payload: entries missing", `"v7"`},
		{"entries key in another case", `{"id":7,"Entries":[]}`, "invalid payload: entries missing", "7"},
		// entries not an array
		{"entries object", `{"id":7,"entries":{"a":1}}`, "invalid payload: entries must be an array, got object", "7"},
		{"entries string", `{"id":"v","entries":"[1]"}`, "invalid payload: entries must be an array, got string", `"v"`},
		{"entries number", `{"entries":15}`, "invalid payload: entries must be an array, got number", ""},
		{"entries null", `{"entries":null}`, "invalid payload: entries must be an array, got null", ""},
		{"entries boolean", `{"entries":false}`, "invalid payload: entries must be an array, got boolean", ""},
		// id of a wrong type: refused even though entries are fine, and no id is kept
		{"id null", `{"id":null,"entries":[]}`, "invalid payload: id must be a string or a number, got null", ""},
		{"id true", `{"id":true,"entries":[]}`, "invalid payload: id must be a string or a number, got boolean", ""},
		{"id false", `{"id":false,"entries":[]}`, "invalid payload: id must be a string or a number, got boolean", ""},
		{"id object", `{"id":{"n":1},"entries":[]}`, "invalid payload: id must be a string or a number, got object", ""},
		{"id array", `{"id":[1],"entries":[]}`, "invalid payload: id must be a string or a number, got array", ""},
		{"id of wrong type and entries missing", `{"id":null}`, "invalid payload: id must be a string or a number, got null", ""},
		// ids a decoder could only read by replacing characters with U+FFFD: different ids would become
		// one key, and the confirmation would carry an id the server never sent
		{"id with invalid UTF-8", "{\"id\":\"a\xffb\",\"entries\":[]}", "invalid payload: id is not valid Unicode text", ""},
		{"id with a lone high surrogate", `{"id":"\ud800","entries":[]}`, "invalid payload: id is not valid Unicode text", ""},
		{"id with a lone low surrogate", `{"id":"\udc00","entries":[]}`, "invalid payload: id is not valid Unicode text", ""},
		{"id with a high surrogate before a non-surrogate", `{"id":"\ud83d\u0041","entries":[]}`, "invalid payload: id is not valid Unicode text", ""},
		{"id with a high surrogate at the end", `{"id":"x\uD83D","entries":[]}`, "invalid payload: id is not valid Unicode text", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ie := inputError(t, []byte(tt.payload), DefaultLimits(mib))
			if got := ie.Status(); got != tt.wantStatus {
				t.Errorf("Status() = %q\n                  want %q", got, tt.wantStatus)
			}
			if got := ie.ID.Key(); got != tt.wantIDKey {
				t.Errorf("ID.Key() = %q, want %q", got, tt.wantIDKey)
			}
		})
	}
}

func TestParsePush_LimitsAtTheirBoundary(t *testing.T) {
	lim := DefaultLimits(mib) // depth 64, id 256 bytes, 100000 entries
	nested := func(arrays int) string {
		return `{"id":3,"entries":` + strings.Repeat("[", arrays) + strings.Repeat("]", arrays) + `}`
	}
	manyEntries := func(n int) string {
		return `{"id":"many","entries":[0` + strings.Repeat(",0", n-1) + `]}`
	}
	stringID := func(canonicalLen int) string {
		return `{"id":"` + strings.Repeat("s", canonicalLen-2) + `","entries":[]}`
	}
	numberID := func(digits int) string {
		return `{"id":` + strings.Repeat("9", digits) + `,"entries":[]}`
	}
	sized := func(size int) string { // a valid push of exactly size bytes
		const head, tail = `{"entries":["`, `"]}`
		return head + strings.Repeat("a", size-len(head)-len(tail)) + tail
	}

	tests := []struct {
		name       string
		payload    string
		lim        Limits
		wantStatus string // "" = accepted
		wantIDKey  string
	}{
		{"payload at the limit", sized(1000), DefaultLimits(1000), "", ""},
		{"payload one byte over", sized(1001), DefaultLimits(1000), "invalid payload: payload too large: 1001 bytes, limit 1000", ""},
		{"depth at the limit (the payload object counts)", nested(63), lim, "", "3"},
		{"depth one over", nested(64), lim, "invalid payload: nesting deeper than 64 levels", ""},
		{"depth counted in the id too", `{"id":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `,"entries":[]}`, lim, "invalid payload: nesting deeper than 64 levels", ""},
		{"brackets inside strings are not nesting", `{"entries":["` + strings.Repeat("[", 100) + `"]}`, lim, "", ""},
		{"string id at the limit", stringID(256), lim, "", `"` + strings.Repeat("s", 254) + `"`},
		{"string id one byte over", stringID(257), lim, "invalid payload: id longer than 256 bytes", ""},
		{"escaped string id measured in canonical form", `{"id":"` + strings.Repeat(`\u0041`, 254) + `","entries":[]}`, lim, "", `"` + strings.Repeat("A", 254) + `"`},
		{"number id at the limit", numberID(256), lim, "", strings.Repeat("9", 256)},
		{"number id one byte over", numberID(257), lim, "invalid payload: id longer than 256 bytes", ""},
		{"entries at the limit", manyEntries(100000), lim, "", `"many"`},
		{"entries one over, id kept", manyEntries(100001), lim, "invalid payload: too many entries: 100001, limit 100000", `"many"`},
		{"entries counted at the top level only", `{"entries":[[1,2,3],{"a":1,"b":2},"x,y"]}`, Limits{MaxEntries: 3}, "", ""},
		{"entries one over a small limit", `{"id":1,"entries":[1,2,3,4]}`, Limits{MaxEntries: 3}, "invalid payload: too many entries: 4, limit 3", "1"},
		{"zero limits do not restrict", `{"id":"` + strings.Repeat("s", 300) + `","entries":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`, Limits{}, "", `"` + strings.Repeat("s", 300) + `"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.wantStatus == "" {
				p := mustParsePush(t, tt.payload, tt.lim)
				if got := p.ID.Key(); got != tt.wantIDKey {
					t.Errorf("ID.Key() = %.80q, want %.80q", got, tt.wantIDKey)
				}
				return
			}
			ie := inputError(t, []byte(tt.payload), tt.lim)
			if got := ie.Status(); got != tt.wantStatus {
				t.Errorf("Status() = %q, want %q", got, tt.wantStatus)
			}
			if got := ie.ID.Key(); got != tt.wantIDKey {
				t.Errorf("ID.Key() = %q, want %q", got, tt.wantIDKey)
			}
		})
	}
}

// The size is checked before anything looks at the bytes: a huge payload costs no parsing and gets
// the size message even when it is not JSON at all.
func TestParsePush_OversizedIsRefusedBeforeParsing(t *testing.T) {
	for _, tc := range []struct {
		name string
		fill byte
	}{
		{"not JSON", 'x'},
		{"unbalanced brackets", '['},
		{"closing brackets", ']'},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte{tc.fill}, 2*mib)
			ie := inputError(t, payload, DefaultLimits(mib))
			const want = "invalid payload: payload too large: 2097152 bytes, limit 1048576"
			if got := ie.Status(); got != want {
				t.Fatalf("Status() = %q, want %q", got, want)
			}
		})
	}
}

func TestInputError_ErrorIsTheStatus(t *testing.T) {
	e := &InputError{ID: IDFromKey("7"), Reason: "entries missing"}
	if e.Status() != "invalid payload: entries missing" || e.Error() != e.Status() {
		t.Fatalf("Status() = %q, Error() = %q", e.Status(), e.Error())
	}
}

func TestConfirmation_Bytes(t *testing.T) {
	tests := []struct {
		name   string
		id     ID
		status string
		want   string
	}{
		{"number id", IDFromKey("42"), StatusOK, `{"id":42,"status":"ok"}`},
		{"number id as written", IDFromKey("1.50"), StatusOK, `{"id":1.50,"status":"ok"}`},
		{"string id", IDFromKey(`"42"`), StatusOK, `{"id":"42","status":"ok"}`},
		{"no id: no id key at all", ID{}, StatusOK, `{"status":"ok"}`},
		{"error status", IDFromKey("7"), "invalid payload: entries missing", `{"id":7,"status":"invalid payload: entries missing"}`},
		{"quotes and html characters", IDFromKey(`"<a&b>"`), `hook exited 1: "x" <y> & z`, `{"id":"<a&b>","status":"hook exited 1: \"x\" <y> & z"}`},
		{"control characters escaped", IDFromKey(`"a\nb"`), "line\none\ttab", `{"id":"a\nb","status":"line\none\ttab"}`},
		{"superseded", IDFromKey("41"), Superseded(IDFromKey(`"v42"`)), `{"id":41,"status":"superseded by v42"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(Confirmation(tt.id, tt.status)); got != tt.want {
				t.Fatalf("Confirmation = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestConfirmation_CarriesThePushIDInTheSameJSONType(t *testing.T) {
	tests := []struct{ push, want string }{
		{`{"id":42,"entries":[]}`, `{"id":42,"status":"ok"}`},
		{`{"id":"42","entries":[]}`, `{"id":"42","status":"ok"}`},
		{`{"id":"\u0041","entries":[]}`, `{"id":"A","status":"ok"}`},
		{`{"entries":[]}`, `{"status":"ok"}`},
	}
	for _, tt := range tests {
		p := mustParsePush(t, tt.push, DefaultLimits(mib))
		if got := string(Confirmation(p.ID, StatusOK)); got != tt.want {
			t.Errorf("confirmation of %s = %s, want %s", tt.push, got, tt.want)
		}
	}
}

func TestParseConfirmation_RoundTripKeepsTheType(t *testing.T) {
	for _, key := range []string{"", "42", `"42"`, "1.50", "-3", `"A"`, `""`, `"<a&b>"`, `"a\"b\\c\nd"`, `"é😀"`} {
		for _, status := range []string{StatusOK, "invalid payload: entries missing", "superseded by a newer push", ""} {
			payload := Confirmation(IDFromKey(key), status)
			id, gotStatus, err := ParseConfirmation(payload)
			if err != nil {
				t.Errorf("ParseConfirmation(%s): %v", payload, err)
				continue
			}
			if id.Key() != key || gotStatus != status {
				t.Errorf("ParseConfirmation(%s) = %q, %q; want %q, %q", payload, id.Key(), gotStatus, key, status)
			}
		}
	}
}

func TestParseConfirmation_CanonicalisesStringIDs(t *testing.T) {
	id, status, err := ParseConfirmation([]byte(`{"id":"\u0041\u003c","status":"ok"}`))
	if err != nil || id.Key() != `"A<"` || status != "ok" {
		t.Fatalf("ParseConfirmation = %q, %q, %v; want \"A<\", ok", id.Key(), status, err)
	}
}

func TestParseConfirmation_Refuses(t *testing.T) {
	for _, payload := range []string{
		``,
		`not json`,
		`[]`,
		`{}`,
		`{"id":1}`,
		`{"id":1,"status":null}`,
		`{"id":1,"status":1}`,
		`{"id":null,"status":"ok"}`,
		`{"id":true,"status":"ok"}`,
		`{"id":[1],"status":"ok"}`,
		`{"id":{},"status":"ok"}`,
		`{"id":"\ud800","status":"ok"}`,
	} {
		if id, status, err := ParseConfirmation([]byte(payload)); err == nil {
			t.Errorf("ParseConfirmation(%s) = %q, %q, nil; want an error", payload, id.Key(), status)
		}
	}
}

func TestSuperseded(t *testing.T) {
	tests := []struct {
		newer ID
		want  string
	}{
		{ID{}, "superseded by a newer push"},
		{IDFromKey("42"), "superseded by 42"},
		{IDFromKey(`"42"`), "superseded by 42"},
		{IDFromKey(`"v2"`), "superseded by v2"},
		{IDFromKey(`"a\"b"`), `superseded by a"b`},
	}
	for _, tt := range tests {
		if got := Superseded(tt.newer); got != tt.want {
			t.Errorf("Superseded(%q) = %q, want %q", tt.newer.Key(), got, tt.want)
		}
	}
}

func TestID_Accessors(t *testing.T) {
	tests := []struct {
		name     string
		id       ID
		wantText string
		wantJSON string
		wantZero bool
	}{
		{"none", ID{}, "", "", true},
		{"none from an empty key", IDFromKey(""), "", "", true},
		{"number", IDFromKey("42"), "42", "42", false},
		{"number as written", IDFromKey("-1.50e2"), "-1.50e2", "-1.50e2", false},
		{"string", IDFromKey(`"v1"`), "v1", `"v1"`, false},
		{"string of digits", IDFromKey(`"42"`), "42", `"42"`, false},
		{"string with escapes", IDFromKey(`"a\"b\u00e9"`), `a"bé`, `"a\"b\u00e9"`, false},
		{"empty string", IDFromKey(`""`), "", `""`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.id.Text(); got != tt.wantText {
				t.Errorf("Text() = %q, want %q", got, tt.wantText)
			}
			if got := string(tt.id.JSON()); got != tt.wantJSON {
				t.Errorf("JSON() = %q, want %q", got, tt.wantJSON)
			}
			if tt.wantZero && tt.id.JSON() != nil {
				t.Errorf("JSON() = %#v, want nil for no id", tt.id.JSON())
			}
			if got := tt.id.IsZero(); got != tt.wantZero {
				t.Errorf("IsZero() = %v, want %v", got, tt.wantZero)
			}
			if got := IDFromKey(tt.id.Key()); got != tt.id {
				t.Errorf("IDFromKey(Key()) = %#v, want %#v", got, tt.id)
			}
		})
	}
}

func TestDefaultLimits(t *testing.T) {
	want := Limits{MaxPayload: mib, MaxDepth: 64, MaxIDLen: 256, MaxEntries: 100000}
	if got := DefaultLimits(mib); got != want {
		t.Fatalf("DefaultLimits(1MiB) = %+v, want %+v", got, want)
	}
}

func TestTooLarge_NamesTheIDWhenItComesBeforeTheCut(t *testing.T) {
	lim := DefaultLimits(100)
	tests := []struct {
		name, head, key, wantKey string
	}{
		{"number id first", `{"id": 42, "entries": [{"a":`, "id", "42"},
		{"string id after entries start", `{"x": {"y": [1, 2]}, "id": "a\"b", "entries": [`, "id", `"a\"b"`},
		{"configId", `{"configId": "cfg-7", "config": {"k": "vvvv`, "configId", `"cfg-7"`},
		{"id cut in the middle", `{"entries": [], "id": "abc`, "id", ""},
		{"id after the cut", `{"entries": [1, 2, 3`, "id", ""},
		{"not an object", `[1, 2`, "id", ""},
		{"id of a wrong type", `{"id": true, "entries": [`, "id", ""},
		{"nested id is not the push's", `{"entries": [{"id": 9}], "x`, "id", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := TooLarge([]byte(tc.head), 5000, tc.key, lim)
			if got := e.ID.Key(); got != tc.wantKey {
				t.Errorf("id = %q, want %q", got, tc.wantKey)
			}
			if want := "invalid payload: payload too large: 5000 bytes, limit 100"; e.Status() != want {
				t.Errorf("status = %q, want %q", e.Status(), want)
			}
		})
	}
}
