package cmx

import (
	"encoding/json"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonKind names the JSON type of a value from its first byte; the value is assumed to be valid JSON.
func jsonKind(v []byte) string {
	for _, c := range v {
		if unicode.IsSpace(rune(c)) {
			continue
		}
		switch {
		case c == '{':
			return "object"
		case c == '[':
			return "array"
		case c == '"':
			return "string"
		case c == 't' || c == 'f':
			return "boolean"
		case c == 'n':
			return "null"
		default:
			return "number"
		}
	}
	return "nothing"
}

func isJSONSyntax(v []byte) bool { return json.Valid(v) }

// nestingDepth returns the deepest nesting of arrays and objects in v without decoding it, so a
// deeply nested payload is refused before the decoder recurses into it. ok is false when brackets do
// not balance (the decoder then reports the exact syntax error).
func nestingDepth(v []byte) (depth int, ok bool) {
	cur := 0
	inString, escaped := false, false
	for _, c := range v {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '[', '{':
			cur++
			if cur > depth {
				depth = cur
			}
		case ']', '}':
			cur--
			if cur < 0 {
				return depth, false
			}
		}
	}
	return depth, true
}

// arrayLen counts the elements of a valid JSON array by its top-level commas.
func arrayLen(v []byte) int {
	commas, level := 0, 0
	inString, escaped, sawValue := false, false, false
	for _, c := range v {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '[', '{':
			level++
			if level == 1 {
				continue // the array itself
			}
		case ']', '}':
			level--
			if level == 0 {
				continue
			}
		case '"':
			inString = true
		case ',':
			if level == 1 {
				commas++
			}
		}
		sawValue = true
	}
	if !sawValue {
		return 0
	}
	return commas + 1
}

// exactString reports whether a valid JSON string literal decodes without loss: valid UTF-8, and every
// \u escape of a surrogate is half of a pair.
func exactString(lit []byte) bool {
	if !utf8.Valid(lit) {
		return false
	}
	for i := 0; i < len(lit); i++ {
		if lit[i] != '\\' {
			continue
		}
		i++
		if i >= len(lit) {
			return false
		}
		if lit[i] != 'u' {
			continue
		}
		r := hex4(lit[i+1:])
		i += 4
		if !utf16.IsSurrogate(r) {
			continue
		}
		if r >= 0xdc00 { // a low surrogate with no high one before it
			return false
		}
		if i+6 >= len(lit) || lit[i+1] != '\\' || lit[i+2] != 'u' {
			return false
		}
		if low := hex4(lit[i+3:]); low < 0xdc00 || low > 0xdfff {
			return false
		}
		i += 6
	}
	return true
}

// hex4 reads the four hex digits of a \u escape; -1 when they are not there.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	n, err := strconv.ParseUint(string(b[:4]), 16, 16)
	if err != nil {
		return -1
	}
	return rune(n)
}
