package cmx

import (
	"strings"
	"testing"
)

func TestNestingDepth(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		wantDepth int
		wantOK    bool
	}{
		{"empty", ``, 0, true},
		{"scalar", `42`, 0, true},
		{"string", `"x"`, 0, true},
		{"empty array", `[]`, 1, true},
		{"empty object", `{}`, 1, true},
		{"empty array with whitespace", "[ \n\t ]", 1, true},
		{"siblings do not add up", `[[],[],{}]`, 2, true},
		{"mixed nesting", `{"a":[{"b":[1]}]}`, 4, true},
		{"brackets inside a string", `{"a":"[[[{{{"}`, 1, true},
		{"closing brackets inside a string", `["]]]}}}"]`, 1, true},
		{"escaped quote does not end the string", `["\"[[["]`, 1, true},
		{"escaped backslash then quote ends the string", `["\\",[[]]]`, 3, true},
		{"escaped backslash before an escaped quote", `["\\\"[" , []]`, 2, true},
		{"unicode escape", `["\u005b",[]]`, 2, true},
		{"unbalanced open is still counted", `[[[`, 3, true},
		{"unterminated string hides the rest", `["[[[`, 1, true},
		{"closing before opening", `]`, 0, false},
		{"one close too many", `[]]`, 1, false},
		{"object closed twice", `{"a":{}}}`, 2, false},
		{"deep", strings.Repeat("[", 1000) + strings.Repeat("]", 1000), 1000, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			depth, ok := nestingDepth([]byte(tt.in))
			if depth != tt.wantDepth || ok != tt.wantOK {
				t.Fatalf("nestingDepth(%.60q) = %d, %v; want %d, %v", tt.in, depth, ok, tt.wantDepth, tt.wantOK)
			}
		})
	}
}

func TestArrayLen(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int
	}{
		{"empty", `[]`, 0},
		{"empty with a space", `[ ]`, 0},
		{"empty with every JSON whitespace", "[ \t\r\n ]", 0},
		{"one number", `[1]`, 1},
		{"one number with whitespace", "[ 1 ]", 1},
		{"three", `[1,2,3]`, 3},
		{"three with whitespace", "[ 1 ,\n 2 ,\t3 ]", 3},
		{"empty string", `[""]`, 1},
		{"empty array element", `[[]]`, 1},
		{"empty object element", `[{}]`, 1},
		{"two empty containers", `[ [ ] , { } ]`, 2},
		{"comma inside a string", `["a,b"]`, 1},
		{"brackets and comma inside a string", `["[,]", "{,}"]`, 2},
		{"escaped quote inside a string", `["\",", 2]`, 2},
		{"escaped backslash ends the string", `["\\", "x"]`, 2},
		{"commas in nested containers", `[[1,2],{"a":1,"b":2},3]`, 3},
		{"deep nesting", `[[[[1,2]],[3]],4]`, 2},
		{"literals", `[true,false,null]`, 3},
		{"contract example", "[\n    { \"key\": \"value\" },\n    15,\n    [ \"an\", \"array\", 13 ]\n  ]", 3},
		{"many", "[0" + strings.Repeat(",0", 99999) + "]", 100000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := arrayLen([]byte(tt.in)); got != tt.want {
				t.Fatalf("arrayLen(%.60q) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

func TestJSONKind(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{}`, "object"},
		{` [1]`, "array"},
		{`"s"`, "string"},
		{`true`, "boolean"},
		{`false`, "boolean"},
		{`null`, "null"},
		{`-1`, "number"},
		{`0.5`, "number"},
		{"\n\t 7", "number"},
		{``, "nothing"},
		{"  ", "nothing"},
	}
	for _, tt := range tests {
		if got := jsonKind([]byte(tt.in)); got != tt.want {
			t.Errorf("jsonKind(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestExactString(t *testing.T) {
	tests := []struct {
		name string
		lit  string
		want bool
	}{
		{"empty", `""`, true},
		{"ASCII", `"abc"`, true},
		{"non-ASCII", `"é😀"`, true},
		{"simple escapes", `"\"\\\/\b\f\n\r\t"`, true},
		{"BMP escape", `"\u0041\u00e9"`, true},
		{"surrogate pair", `"\ud83d\ude00"`, true},
		{"surrogate pair in upper case", `"\uD83D\uDE00"`, true},
		{"replacement character escaped", `"\ufffd"`, true},
		{"replacement character literal", "\"\uFFFD\"", true},
		{"escaped backslash then u is text", `"\\ud800"`, true},
		{"invalid UTF-8", "\"\xff\"", false},
		{"truncated UTF-8", "\"\xc3\"", false},
		{"lone high surrogate", `"\ud800"`, false},
		{"lone low surrogate", `"\udc00"`, false},
		{"high surrogate then text", `"\ud83dx"`, false},
		{"high surrogate then a BMP escape", `"\ud83d\u0041"`, false},
		{"two high surrogates", `"\ud83d\ud83d"`, false},
		{"low then high", `"\ude00\ud83d"`, false},
		{"high surrogate then another escape", `"\ud83d\n"`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := exactString([]byte(tt.lit)); got != tt.want {
				t.Fatalf("exactString(%q) = %v, want %v", tt.lit, got, tt.want)
			}
		})
	}
}
